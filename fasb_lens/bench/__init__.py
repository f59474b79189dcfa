"""Benchmarks behind ``fasb-lens bench``: speed measured side by side in one run.

Each entry times fasb_lens against the baseline it must beat on the same inputs in the
same process, and reports both absolute times and their ratio (these machines are shared
and noisy: the ratio is the number to read). Entries register in :data:`BENCHMARKS`;
later features add theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.bench.context import BenchContext, machine
from fasb_lens.bench.reproduce import bench_reproduce
from fasb_lens.bench.speed import (
    bench_ablation,
    bench_activations,
    bench_attention,
    bench_generation,
    bench_mc,
    bench_probes,
)
from fasb_lens.models import dtype_name, load_model, model_id
from fasb_lens.storage import library_versions

logger = logging.getLogger(__name__)

BENCHMARKS: dict[str, Callable[[BenchContext], dict[str, Any]]] = {
    "activations": bench_activations,
    "probes": bench_probes,
    "generation": bench_generation,
    "mc": bench_mc,
    "attention": bench_attention,
    "ablation": bench_ablation,
    "reproduce": bench_reproduce,
}


def run_benchmarks(
    names: list[str] | None = None,
    *,
    model: TransformerBridge | None = None,
    data_dir: Path | None = None,
    n_prompts: int = 1000,
    batch_size: int = 32,
    progress: bool = True,
    mc_questions: int = 50,
    ablation_questions: int = 20,
    reproduce_questions: int = 40,
    reproduce_out: Path | None = None,
    dtype: str = "float32",
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the named entries (default: all) and return one JSON-ready report.

    ``dtype`` is the default model's (ignored when ``model`` is given). ``on_result``
    receives the report after every entry, so a caller can write it as it grows and keep
    finished entries if a later one is interrupted.
    """
    unknown = sorted(set(names or []) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    model = model if model is not None else load_model(dtype=dtype)
    ctx = BenchContext(
        model,
        data_dir,
        n_prompts=n_prompts,
        batch_size=batch_size,
        progress=progress,
        mc_questions=mc_questions,
        ablation_questions=ablation_questions,
        reproduce_questions=reproduce_questions,
        reproduce_out=reproduce_out,
    )
    report: dict[str, Any] = {
        "model": model_id(model),
        "dtype": dtype_name(model),
        "machine": machine(),
        "versions": library_versions(),
        "results": {},
        "notes": ctx.notes,
    }
    for name in names or list(BENCHMARKS):
        logger.info("benchmark %s", name)
        report["results"][name] = BENCHMARKS[name](ctx)
        if on_result is not None:
            on_result(report)
    return report
