"""What only a GPU can show, checked in a few minutes: ``fasb-lens gpu-check``.

The test suite runs on CPUs in float32. On one GPU, in float16 and bfloat16, these checks
run the embedded model (or ``--model``) through every path whose numbers depend on the
device or the dtype, each against its reference:

* cached generation gives the tokens the authors' recompute loop (``reference`` mode) gives;
* FASB triggers and backtracks (a threshold above 1 makes every answer trigger), and its
  first steered token is the reference loop's;
* the fast attention (fused ``scaled_dot_product_attention`` in half precision) generates
  the bridge attention's tokens;
* multiple choice (MC2 and every answer's log-probability, unsteered and under FASB) is
  close to the same questions scored on the CPU in float32;
* ``ablate --estimator exact`` equals the head-by-head loop;
* ``reproduce --questions N`` is timed (and scaled to the dataset, as ``bench`` does);

and with two GPUs or more, the model split over two (``--n-devices 2``) generates the
tokens one GPU generates, and ``reproduce`` in two processes (``torchrun``) writes the
table one process writes. A check that finds a bug fails; one that finds only the rounding
of half precision (a token flipped near a tie) warns and says where.

It also measures the GPU's matrix-product rate and memory bandwidth in the checked dtype
and turns them into an estimate of a 7B model's throughput per GPU
(:func:`throughput_estimate`). Everything runs on a CPU too (``--device cpu``), which is
how the tests check this package.

The parts, one job each: :mod:`.results` (a check's result and how its body records
it), :mod:`.agreement` (token lists compared), :mod:`.generation_checks`,
:mod:`.scoring_checks` and :mod:`.reproduce_checks` (the checks), :mod:`.throughput`
(rates and the roofline), :mod:`.runner` (the options and the run) and :mod:`.report`.
"""

from fasb_lens.bench.gpu_check.agreement import agreement_status, first_difference, token_agreement
from fasb_lens.bench.gpu_check.report import report_lines, write_report
from fasb_lens.bench.gpu_check.results import CheckResult, Status
from fasb_lens.bench.gpu_check.runner import GpuCheckSettings, run_checks
from fasb_lens.bench.gpu_check.scoring_checks import MC_TOLERANCE, compare_mc, mc_scores
from fasb_lens.bench.gpu_check.throughput import measure_rates, throughput_estimate

__all__ = [
    "MC_TOLERANCE",
    "CheckResult",
    "GpuCheckSettings",
    "Status",
    "agreement_status",
    "compare_mc",
    "first_difference",
    "mc_scores",
    "measure_rates",
    "report_lines",
    "run_checks",
    "throughput_estimate",
    "token_agreement",
    "write_report",
]
