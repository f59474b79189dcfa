"""``fasb-lens gpu-check``'s options and its run: the CPU float32 reference once, then
every check in every dtype asked for (and the two-GPU checks where there are two)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.anchoring import anchor_heads
from fasb_lens.bench.gpu_check.generation_checks import (
    check_cached_equals_reference,
    check_fasb_backtracks,
    check_fast_attention,
    check_split_equals_one,
)
from fasb_lens.bench.gpu_check.reproduce_checks import check_processes, time_reproduce
from fasb_lens.bench.gpu_check.results import CheckResult
from fasb_lens.bench.gpu_check.scoring_checks import (
    check_exact_equals_loop,
    check_mc_against_cpu,
    mc_scores,
)
from fasb_lens.bench.gpu_check.throughput import measure_rates, throughput_estimate
from fasb_lens.data import load_mini_truthfulqa, load_prompt_format
from fasb_lens.generation import GenerationConfig
from fasb_lens.models import ModelOptions
from fasb_lens.options import AT_LEAST_ONE, NON_NEGATIVE, check_options, option
from fasb_lens.splits import train_val_split
from fasb_lens.steering import Steering


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
