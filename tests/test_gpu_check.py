"""The GPU check's parts that run on a CPU: every check on the tiny model in float32, the
comparisons, the throughput estimate and the report."""

from __future__ import annotations

import pytest
import torch

from fasb_lens import cli
from fasb_lens.bench.gpu_check import (
    CheckResult,
    GpuCheckSettings,
    agreement_status,
    report_lines,
    run_checks,
    throughput_estimate,
    token_agreement,
)
from fasb_lens.models import ModelOptions


def test_token_agreement_and_its_verdict() -> None:
    same = token_agreement([[1, 2], [3]], [[1, 2], [3]])
    assert same == {"equal": 2, "answers": 2, "first_difference": None}
    assert agreement_status(same, True, "equal")[0] == "ok"
    one_off = token_agreement([[1, 2], [3], [4]], [[1, 5], [3], [4]])
    assert one_off["first_difference"] == {"answer": 0, "token": 1}
    status, detail = agreement_status(one_off, True, "token-equal")
    assert status == "warn" and "answer 0 differs from token 1" in detail
    shorter = token_agreement([[1, 2]], [[1]])
    assert agreement_status(shorter, False, "equal")[0] == "FAIL"


def test_throughput_estimate_is_the_roofline() -> None:
    rates = {"matmul_flops_per_s": 6.74e14 * 2, "bandwidth_bytes_per_s": 2 * 6.74e9 * 100}
    estimate = throughput_estimate(rates)
    assert estimate["prompt_tokens_per_s"] == 100_000
    assert estimate["decode_tokens_per_s_batch_1"] == 100.0
    assert estimate["decode_tokens_per_s_batch_64"] == 6400


def test_every_check_runs_on_the_cpu(tiny_llama_folder) -> None:
    settings = GpuCheckSettings(
        dtypes=("float32",),
        questions=3,
        max_new_tokens=6,
        ablation_questions=2,
        reproduce_questions=0,
    )
    seen: list[CheckResult] = []
    report = run_checks(
        ModelOptions(name=str(tiny_llama_folder), device="cpu"), settings, on_result=seen.append
    )
    names = [result["name"] for result in report["results"]]
    assert names == [
        "generation: cached = reference loop",
        "FASB triggers and backtracks",
        "fast attention = bridge attention",
        "multiple choice vs CPU float32",
        "ablate: exact engine = loop",
    ]
    assert [r.name for r in seen] == names
    statuses = {result["name"]: result["status"] for result in report["results"]}
    assert report["failed"] == 0, report["results"]
    # the same model and dtype as the reference: multiple choice matches it closely
    assert statuses["multiple choice vs CPU float32"] == "ok"
    assert report["results"][1]["numbers"]["triggered"] == 3
    lines = report_lines(report)
    assert lines[0].startswith("fasb-lens gpu-check on cpu") and lines[-1] == "all checks passed"
    assert all(" ok " in line or " warn " in line for line in lines[1:-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_command_says_when_there_is_no_gpu(capsys) -> None:
    assert cli.main(["gpu-check"]) == 2
    assert "no CUDA device here; `--device cpu --dtypes float32`" in capsys.readouterr().err
