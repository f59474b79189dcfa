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
how the tests check this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.ablation import ablation_study, logprob_margin
from fasb_lens.anchoring import anchor_heads
from fasb_lens.data import load_mini_truthfulqa, load_prompt_format
from fasb_lens.generation import GenerationConfig, generate
from fasb_lens.models import ModelOptions, bridge_attention, model_shape
from fasb_lens.multiple_choice import evaluate_mc
from fasb_lens.options import AT_LEAST_ONE, NON_NEGATIVE, check_options, option
from fasb_lens.policies import FASB, Unsteered
from fasb_lens.splits import train_val_split
from fasb_lens.steering import Steering

Status = Literal["ok", "warn", "FAIL", "skipped"]


@dataclass
class CheckResult:
    """One check: what it compared, how it went, what it found, how long it took."""

    name: str
    dtype: str
    status: Status
    detail: str
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The check as one report line."""
        name = f"{self.dtype:<9} {self.name} ".ljust(52, ".")
        return f"{name} {self.status:<7} {self.detail} ({self.seconds:.1f} s)"


@dataclass(frozen=True)
class GpuCheckSettings:
    """What ``fasb-lens gpu-check`` runs (its options)."""

    dtypes: tuple[str, ...] = option(
        ("float16", "bfloat16"), help="dtypes checked", choices=("float32", "float16", "bfloat16")
    )
    questions: int = option(
        12, help="questions of the generation and multiple-choice checks", bounds=AT_LEAST_ONE
    )
    max_new_tokens: int = option(24, help="tokens of each checked answer", bounds=AT_LEAST_ONE)
    ablation_questions: int = option(3, help="questions of the ablation check", bounds=AT_LEAST_ONE)
    reproduce_questions: int = option(
        40, help="questions of the timed reproduce run (0: no run)", bounds=NON_NEGATIVE
    )
    processes: bool = option(
        True, help="skip the two-GPU checks (split model, two processes) even with two GPUs"
    )
    cpu_reference: bool = option(
        True,
        help="skip the CPU float32 reference (anchoring and multiple choice on the CPU): for "
        "a model too big for the CPU; the heads are then anchored on the GPU",
    )

    def __post_init__(self) -> None:
        check_options(self)


# --------------------------------------------------------------------------- the checks


@contextmanager
def _timed(results: list[CheckResult], name: str, dtype: str) -> Iterator[dict[str, Any]]:
    """Run a check's body; it fills ``found`` (status, detail, numbers). A crash is a FAIL
    whose detail is the error."""
    found: dict[str, Any] = {"status": "ok", "detail": "", "numbers": {}}
    start = time.perf_counter()
    try:
        yield found
    except Exception as error:  # a crashing check is a failed one, the others still run
        found.update(status="FAIL", detail=f"{type(error).__name__}: {error}"[:300])
    results.append(
        CheckResult(
            name,
            dtype,
            found["status"],
            found["detail"],
            round(time.perf_counter() - start, 2),
            found["numbers"],
        )
    )


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where two token lists differ (``None``: equal)."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def token_agreement(first: Sequence[Sequence[int]], second: Sequence[Sequence[int]]) -> dict:
    """How many answers are token-equal, and where the first differing one differs."""
    pairs = enumerate(zip(first, second, strict=True))
    differ = [(i, first_difference(a, b)) for i, (a, b) in pairs]
    differ = [(i, at) for i, at in differ if at is not None]
    return {
        "equal": len(first) - len(differ),
        "answers": len(first),
        "first_difference": None if not differ else {"answer": differ[0][0], "token": differ[0][1]},
    }


def _agreement_status(agreement: dict, half: bool, what: str) -> tuple[Status, str]:
    """``ok`` when every answer is equal; a minority of answers that part from a token on
    (rounding turning a near-tie, most likely in half precision) warns; a majority fails."""
    equal, total = agreement["equal"], agreement["answers"]
    detail = f"{equal}/{total} answers {what}"
    if equal == total:
        return "ok", detail
    where = agreement["first_difference"]
    detail += f"; answer {where['answer']} differs from token {where['token']}"
    if equal >= total / 2:
        rounding = "half-precision rounding" if half else "rounding"
        return "warn", detail + f" ({rounding} turning a near-tie?)"
    return "FAIL", detail


def check_cached_equals_reference(model, prompts, config, half, results, dtype) -> None:
    with _timed(results, "generation: cached = reference loop", dtype) as found:
        cached = generate(model, prompts, config=config)
        reference = generate(model, prompts, config=replace(config, mode="reference"))
        agreement = token_agreement(
            [t.output_ids for t in cached], [t.output_ids for t in reference]
        )
        found["status"], found["detail"] = _agreement_status(agreement, half, "token-equal")
        found["numbers"] = agreement


def check_fasb_backtracks(model, prompts, steering, config, results, dtype) -> None:
    """Every answer triggers (threshold above 1), drops its tokens since the check and is
    steered from there; cached and reference runs agree on the first steered token."""
    with _timed(results, "FASB triggers and backtracks", dtype) as found:
        policy = FASB(alpha=8.0, threshold=1.1, backtrack_tokens=3)
        cached = generate(model, prompts, steering=steering, policy=policy, config=config)
        reference = generate(
            model,
            prompts,
            steering=steering,
            policy=policy,
            config=replace(config, mode="reference"),
        )
        triggered = sum(t.triggered for t in cached)
        dropped = sum(bool(t.discarded_ids) for t in cached)
        readings = [p for t in cached for p in t.p_true if p is not None]
        first_equal = sum(
            a.output_ids[:1] == b.output_ids[:1] for a, b in zip(cached, reference, strict=True)
        )
        found["numbers"] = {
            "answers": len(cached),
            "triggered": triggered,
            "backtracked": dropped,
            "first_token_equal_to_reference": first_equal,
            "p_true_range": [min(readings), max(readings)] if readings else None,
        }
        found["detail"] = (
            f"{triggered}/{len(cached)} triggered, {dropped} dropped tokens, first token = "
            f"reference in {first_equal}"
        )
        finite = all(0.0 <= p <= 1.0 for p in readings)
        if triggered < len(cached) or not finite:
            found["status"] = "FAIL"
            found["detail"] += "" if finite else "; p_true outside [0, 1]"


def check_fast_attention(model, prompts, config, half, results, dtype) -> None:
    with _timed(results, "fast attention = bridge attention", dtype) as found:
        fast = generate(model, prompts, config=config)
        with bridge_attention():
            bridge = generate(model, prompts, config=config)
        agreement = token_agreement([t.output_ids for t in fast], [t.output_ids for t in bridge])
        found["status"], found["detail"] = _agreement_status(agreement, half, "token-equal")
        found["numbers"] = agreement


def mc_scores(model, questions, steering, fmt) -> list[dict[str, Any]]:
    """Each question's MC2 and answers' log-probabilities, unsteered and under FASB."""
    policies = {"none": Unsteered(), "fasb": FASB(alpha=8.0, threshold=0.5, backtrack_tokens=2)}
    return [
        evaluate_mc(model, q, policies, fmt=fmt, steering=steering, source="csv") for q in questions
    ]


def compare_mc(got: list[dict], reference: list[dict]) -> dict[str, float]:
    """The largest and mean differences of MC2, and the largest of an unsteered answer's
    log-probability, between two runs of :func:`mc_scores`."""
    mc2 = [
        abs(a[name]["mc2"] - b[name]["mc2"])
        for a, b in zip(got, reference, strict=True)
        for name in ("none", "fasb")
    ]
    log_probs = [
        abs(x["log_prob"] - y["log_prob"])
        for a, b in zip(got, reference, strict=True)
        for x, y in zip(a["none"]["answers"], b["none"]["answers"], strict=True)
    ]
    return {
        "mc2_max_difference": max(mc2),
        "mc2_mean_difference": sum(mc2) / len(mc2),
        "log_prob_max_difference": max(log_probs),
    }


MC_TOLERANCE = {"float32": (1e-3, 1e-3), "half": (0.05, 0.5)}
"""Largest mean MC2 difference and unsteered log-probability difference (nats) that pass
against the CPU's float32 numbers; ten times either fails (a device bug, not rounding)."""


def check_mc_against_cpu(model, questions, steering, fmt, reference, half, results, dtype):
    with _timed(results, "multiple choice vs CPU float32", dtype) as found:
        numbers = compare_mc(mc_scores(model, questions, steering, fmt), reference)
        mc2_limit, log_prob_limit = MC_TOLERANCE["half" if half else "float32"]
        found["numbers"] = numbers
        found["detail"] = (
            f"MC2 differs by {numbers['mc2_mean_difference']:.4f} on average "
            f"(max {numbers['mc2_max_difference']:.4f}), log-probs by at most "
            f"{numbers['log_prob_max_difference']:.4f}"
        )
        worst = max(
            numbers["mc2_mean_difference"] / mc2_limit,
            numbers["log_prob_max_difference"] / log_prob_limit,
        )
        if not worst <= 10:  # also catches NaN
            found["status"] = "FAIL"
        elif worst > 1:
            found["status"] = "warn"


def check_exact_equals_loop(model, questions, half, results, dtype) -> None:
    with _timed(results, "ablate: exact engine = loop", dtype) as found:
        shape = model_shape(model)
        layers = sorted({0, shape.n_layers // 2, shape.n_layers - 1})
        heads = [h for h in shape.heads if h.layer in layers and h.head < 2]
        metric = logprob_margin(model, questions)
        exact = ablation_study(model, metric, heads=heads, estimator="exact", progress=False)
        loop = ablation_study(model, metric, heads=heads, estimator="loop", progress=False)
        gap = max(abs(float(exact.values[h]) - float(loop.values[h])) for h in heads)
        limit = 0.05 if half else 1e-4
        found["numbers"] = {"heads": len(heads), "max_difference": gap}
        found["detail"] = f"{len(heads)} heads, largest difference {gap:.2e} (limit {limit:g})"
        if not gap <= 10 * limit:
            found["status"] = "FAIL"
        elif gap > limit:
            found["status"] = "warn"


def time_reproduce(model, questions: int, results, dtype) -> None:
    """A ``reproduce`` of the first ``questions`` questions, timed and scaled to the
    dataset (every phase grows linearly with the questions)."""
    from fasb_lens.data import load_questions
    from fasb_lens.evaluation.config import ExperimentConfig
    from fasb_lens.evaluation.experiment import Experiment

    with _timed(results, f"reproduce --questions {questions}", dtype) as found:
        config = ExperimentConfig(n_questions=questions, model=ModelOptions(dtype=dtype))
        with tempfile.TemporaryDirectory(prefix="fasb-gpu-check-") as out:
            start = time.perf_counter()
            experiment = Experiment(config, out, model=model, progress=False)
            experiment.run()
            wall = time.perf_counter() - start
            phases = dict(experiment.timings)
        total = len(load_questions(config.data))
        found["numbers"] = {"wall_s": round(wall, 1), "phases": phases, "full_estimate_s": None}
        found["numbers"]["full_estimate_s"] = round(wall * total / questions)
        found["detail"] = (
            f"{wall:.0f} s for {questions} questions; all {total} in about "
            f"{wall * total / questions / 60:.0f} min on this GPU"
        )


def check_split_equals_one(options: ModelOptions, prompts, steering, config, results, dtype):
    """The model split over two GPUs generates what one GPU generates (unsteered and FASB)."""
    with _timed(results, "model on 2 GPUs = on 1 GPU", dtype) as found:
        one = replace(options, device="cuda:0", device_map=None, n_devices=None).load()
        two = replace(options, device=None, device_map=None, n_devices=2).load()
        policy = FASB(alpha=8.0, threshold=1.1, backtrack_tokens=3)
        tokens = {}
        for key, model in (("one", one), ("two", two)):
            tokens[key] = [t.output_ids for t in generate(model, prompts, config=config)]
            steered = generate(model, prompts, steering=steering, policy=policy, config=config)
            tokens[key] += [t.output_ids for t in steered]
        agreement = token_agreement(tokens["one"], tokens["two"])
        found["numbers"] = {**agreement, "devices": int(two.cfg.n_devices)}
        found["status"], found["detail"] = _agreement_status(agreement, False, "token-equal")
        del one, two


def check_processes(options: ModelOptions, results, dtype) -> None:
    """``reproduce`` on 8 questions in two processes writes the table of one process."""
    with _timed(results, "reproduce in 2 processes = 1", dtype) as found:
        with tempfile.TemporaryDirectory(prefix="fasb-gpu-check-") as root:
            args = ["reproduce", "--truthfulqa", "mini", "--questions", "8", "--mc-source", "csv"]
            args += ["--policies", "none,fasb", "--judges", "bleu-acc,info-check"]
            args += ["--max-new-tokens", "12", "--dtype", dtype, "--no-progress"]
            if options.name:
                args += ["--model", options.name]
            env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
            walls = {}
            for count in (1, 2):
                out = Path(root) / f"p{count}"
                launcher = [sys.executable]
                if count > 1:
                    launcher += ["-m", "torch.distributed.run", "--standalone"]
                    launcher += ["--nproc-per-node", str(count)]
                start = time.perf_counter()
                done = subprocess.run(
                    [*launcher, "-m", "fasb_lens.cli", *args, "--out", str(out)],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                walls[count] = round(time.perf_counter() - start, 1)
                if done.returncode != 0:
                    raise RuntimeError(f"{count} process(es): {done.stderr.strip()[-300:]}")
            same = (Path(root) / "p1" / "table.md").read_text() == (
                Path(root) / "p2" / "table.md"
            ).read_text()
            found["numbers"] = {"wall_s": walls, "same_table": same}
            found["detail"] = f"same table: {same}; {walls[1]} s alone, {walls[2]} s in two"
            if not same:
                found["status"] = "FAIL"


# --------------------------------------------------------------------------- throughput


def measure_rates(device: str, dtype: torch.dtype) -> dict[str, float]:
    """The device's matrix-product rate (a 7B model's MLP product, FLOP/s) and memory
    bandwidth (a 1 GiB copy, bytes/s), best of three."""

    def best(run: Callable[[], None]) -> float:
        times = []
        for _ in range(3):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times)

    rows, width, hidden = (2048, 4096, 11008) if device != "cpu" else (256, 1024, 2816)
    a = torch.randn(rows, width, dtype=dtype, device=device)
    b = torch.randn(width, hidden, dtype=dtype, device=device)
    a @ b  # warm-up
    seconds = best(lambda: a @ b)
    big = torch.empty((1 << 30) // 2 if device != "cpu" else 1 << 24, dtype=dtype, device=device)
    target = torch.empty_like(big)
    copy = best(lambda: target.copy_(big))
    return {
        "matmul_flops_per_s": 2 * rows * width * hidden / seconds,
        "bandwidth_bytes_per_s": 2 * big.numel() * big.element_size() / copy,
    }


def throughput_estimate(
    rates: dict[str, float], *, parameters: float = 6.74e9, bytes_per_parameter: int = 2
) -> dict[str, float]:
    """A dense model's throughput from a device's rates (the roofline, no overheads):
    prompt tokens per second (compute-bound, ``2 * parameters`` FLOPs a token), and decoding
    tokens per second of one sequence (memory-bound: the weights are read once a step) and
    of a batch of 64 (whichever bound is lower). Defaults: LLaMA-2-7B in half precision."""
    flops = 2 * parameters
    weights = parameters * bytes_per_parameter
    prompt = rates["matmul_flops_per_s"] / flops
    one = rates["bandwidth_bytes_per_s"] / weights
    return {
        "prompt_tokens_per_s": round(prompt),
        "decode_tokens_per_s_batch_1": round(one, 1),
        "decode_tokens_per_s_batch_64": round(min(64 * one, prompt)),
    }


# --------------------------------------------------------------------------- the run


def _steering(model: TransformerBridge, top_k: int = 8) -> tuple[Steering, list]:
    """Heads anchored on 24 mini-set questions (the CPU reference uses the same artifact),
    and the questions left for the checks."""
    questions = load_mini_truthfulqa()
    anchoring_questions = questions[:24]
    split = train_val_split([q.id for q in anchoring_questions], seed=0)
    anchoring = anchor_heads(model, anchoring_questions, split, top_k=top_k, progress=False)
    return anchoring.steering, questions[24:]


def run_checks(
    options: ModelOptions,
    settings: GpuCheckSettings | None = None,
    *,
    on_result: Callable[[CheckResult], None] | None = None,
) -> dict[str, Any]:
    """Every check (module docstring) on the device ``options.device`` names (default
    ``cuda``); ``on_result`` sees each result as it comes. Returns the report."""
    settings = settings or GpuCheckSettings()
    split = options.device_map is not None or (options.n_devices or 1) > 1
    device = "cuda" if split else options.device or "cuda"
    placed = options if split else replace(options, device=device)  # a split stays as given
    results: list[CheckResult] = []

    def keep(result: CheckResult) -> None:
        if on_result is not None:
            on_result(result)

    # the CPU float32 reference: anchoring (one artifact for every run) and MC numbers
    fmt = load_prompt_format()
    steering, rest, reference = None, load_mini_truthfulqa()[24:], None
    if settings.cpu_reference:
        on_cpu = replace(options, dtype="float32", device="cpu", device_map=None, n_devices=None)
        reference_model = on_cpu.load()
        steering, rest = _steering(reference_model)
        reference = mc_scores(reference_model, rest[: settings.questions], steering, fmt)
        del reference_model
    mc_questions = rest[: settings.questions]
    prompts = [fmt.generation_prompt(q.question) for q in rest[: settings.questions]]
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens)
    rates: dict[str, Any] = {}
    for index, dtype in enumerate(settings.dtypes):
        half = dtype != "float32"
        model = replace(placed, dtype=dtype).load()
        if steering is None:
            steering, _ = _steering(model)
        before = len(results)
        check_cached_equals_reference(model, prompts, config, half, results, dtype)
        check_fasb_backtracks(model, prompts, steering, config, results, dtype)
        check_fast_attention(model, prompts, config, half, results, dtype)
        if reference is not None:
            check_mc_against_cpu(
                model, mc_questions, steering, fmt, reference, half, results, dtype
            )
        check_exact_equals_loop(model, rest[: settings.ablation_questions], half, results, dtype)
        if index == 0 and settings.reproduce_questions:
            time_reproduce(model, settings.reproduce_questions, results, dtype)
        for result in results[before:]:
            keep(result)
        rates[dtype] = measure_rates(device, getattr(torch, dtype))
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    two_gpus = device.startswith("cuda") and torch.cuda.device_count() >= 2
    if settings.processes and two_gpus and not split:
        dtype = settings.dtypes[0]
        before = len(results)
        check_split_equals_one(
            replace(options, dtype=dtype), prompts, steering, config, results, dtype
        )
        check_processes(replace(options, dtype=dtype), results, dtype)
        for result in results[before:]:
            keep(result)
    estimates = {
        dtype: throughput_estimate(values) for dtype, values in rates.items() if dtype != "float32"
    }
    return {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
        "gpus": torch.cuda.device_count(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "results": [asdict(result) for result in results],
        "rates": rates,
        "estimate_7b": estimates,
        "failed": sum(result.status == "FAIL" for result in results),
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as lines to print: the checks, then the 7B estimate per dtype."""
    lines = [
        f"fasb-lens gpu-check on {report['device']} ({report['gpus']} GPU(s)), "
        f"torch {report['versions']['torch']}, CUDA {report['versions']['cuda']}"
    ]
    lines += [CheckResult(**result).line() for result in report["results"]]
    for dtype, estimate in report["estimate_7b"].items():
        rates = report["rates"][dtype]
        lines.append(
            f"{dtype:<9} rates: {rates['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s, "
            f"{rates['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s -> a 7B model, per GPU: "
            f"{estimate['prompt_tokens_per_s']} prompt tokens/s, decoding "
            f"{estimate['decode_tokens_per_s_batch_1']} tokens/s alone, "
            f"{estimate['decode_tokens_per_s_batch_64']} in a batch of 64 (roofline)"
        )
    failed = report["failed"]
    lines.append("all checks passed" if not failed else f"{failed} check(s) FAILED")
    return lines


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """The report as JSON (atomically)."""
    from fasb_lens import storage

    storage.write_text(path, json.dumps(report, indent=2))
