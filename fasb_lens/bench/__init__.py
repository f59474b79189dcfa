"""Benchmarks behind ``fasb-lens bench``: speed measured side by side in one run.

Each entry times fasb_lens against the baseline it must beat on the same inputs in the
same process, and reports both absolute times and their ratio (these machines are shared
and noisy: the ratio is the number to read). Entries are registered in :data:`BENCHMARKS`
(one :class:`Benchmark` each); later features add theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.bench.ablation import bench_ablation
from fasb_lens.bench.context import BenchContext, BenchSettings, machine
from fasb_lens.bench.reproduce import bench_reproduce
from fasb_lens.bench.speed import (
    bench_activations,
    bench_attention,
    bench_generation,
    bench_mc,
    bench_probes,
)
from fasb_lens.models import ModelOptions, dtype_name, model_id
from fasb_lens.registry import Registry
from fasb_lens.storage import library_versions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark entry: its name, what it measures, and the function that
    measures it (``run(ctx) -> JSON-ready dict``)."""

    name: str
    run: Callable[[BenchContext], dict[str, Any]]
    description: str


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
"""Every benchmark entry, in the order ``fasb-lens bench`` runs them."""
for _entry in (
    Benchmark("activations", bench_activations, "head-activation collection vs a plain forward"),
    Benchmark("probes", bench_probes, "all-head probes: torch vs scikit-learn"),
    Benchmark("generation", bench_generation, "cached vs reference generation"),
    Benchmark("mc", bench_mc, "multiple-choice scoring: prompt cache and trees vs naive"),
    Benchmark("attention", bench_attention, "the fast attention vs the bridge's"),
    Benchmark("ablation", bench_ablation, "the exact per-head ablation grid vs the loop"),
    Benchmark("reproduce", bench_reproduce, "a whole `reproduce` on a subset, extrapolated"),
):
    BENCHMARKS.register(_entry)


def run_benchmarks(
    names: list[str] | None = None,
    *,
    model: TransformerBridge | None = None,
    data_dir: Path | None = None,
    settings: BenchSettings | None = None,
    dtype: str = "float32",
    model_options: ModelOptions | None = None,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the named entries (default: all) and return one JSON-ready report.

    Without ``model``, the one ``model_options`` name is loaded (default: the embedded
    model in ``dtype``). ``on_result``
    receives the report after every entry, so a caller can write it as it grows and keep
    finished entries if a later one is interrupted.
    """
    for name in names or []:
        BENCHMARKS.resolve(name)
    if model is None:
        model = (model_options or ModelOptions(dtype=dtype)).load()
    ctx = BenchContext(model, data_dir, settings or BenchSettings(), progress=progress)
    report: dict[str, Any] = {
        "model": model_id(model),
        "dtype": dtype_name(model),
        "machine": machine(),
        "versions": library_versions(),
        "results": {},
        "notes": ctx.notes,
    }
    for name in names or BENCHMARKS.names():
        logger.info("benchmark %s", name)
        report["results"][name] = BENCHMARKS.get(name).run(ctx)
        if on_result is not None:
            on_result(report)
    return report
