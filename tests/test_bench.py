"""The benchmark harness: each entry on a tiny model, side by side, JSON-ready."""

from __future__ import annotations

import json

import pytest

from fasb_lens.bench import BENCHMARKS, run_benchmarks
from fasb_lens.bench.context import BenchSettings


def test_bench_activations_on_a_tiny_model(tiny_llama) -> None:
    reports: list[dict] = []
    report = run_benchmarks(
        ["activations"],
        model=tiny_llama,
        data_dir=None,
        settings=BenchSettings(n_prompts=40, batch_size=8),
        progress=False,
        on_result=reports.append,
    )
    entry = report["results"]["activations"]
    assert entry["n_prompts"] == 40
    assert entry["dataset"].startswith("mini")
    for key in ("collect_s", "plain_forward_s", "naive_s"):
        assert entry[key] > 0
    assert entry["collect_over_forward"] == pytest.approx(
        entry["collect_s"] / entry["plain_forward_s"], abs=2e-3
    )
    assert report["notes"] and reports == [report]
    json.dumps(report)


def test_bench_rejects_unknown_entries(tiny_llama) -> None:
    with pytest.raises(ValueError, match=r"unknown benchmark 'nope'; known: activations"):
        run_benchmarks(["nope"], model=tiny_llama)
    assert "activations" in BENCHMARKS


def test_bench_probes_on_a_tiny_model(tiny_llama, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FASB_LENS_CACHE", str(tmp_path))
    entry = run_benchmarks(["probes"], model=tiny_llama, progress=False)["results"]["probes"]
    assert entry["heads"] == 16 and entry["features"] == 16
    assert entry["train_rows"] + entry["val_rows"] < 564  # the first fold's test side is held out
    assert entry["speedup_torch_over_sklearn"] == pytest.approx(
        entry["sklearn_s"] / entry["torch_s"], rel=0.05
    )
    assert 0 <= entry["max_val_accuracy_difference"] <= 1
    assert list((tmp_path / "bench").iterdir())  # activations kept for the next run


def test_bench_mc_on_a_tiny_model(tiny_llama) -> None:
    entry = run_benchmarks(
        ["mc"], model=tiny_llama, progress=False, settings=BenchSettings(mc_questions=4)
    )
    entry = entry["results"]["mc"]
    assert entry["questions"] == 4 and entry["answers_scored"] >= 16
    assert entry["max_abs_log_prob_difference"] < 1e-3  # same scores both ways
    assert entry["speedup"] == pytest.approx(entry["naive_s"] / entry["cached_batched_s"], rel=0.05)
    assert entry["questions_together_max_abs_difference"] < 1e-3  # shared forwards, same scores
    ratio = entry["questions_alone_s"] / entry["questions_together_s"]
    assert entry["questions_together_speedup"] == pytest.approx(ratio, rel=0.05)


def test_bench_attention_on_a_tiny_model(tiny_llama) -> None:
    entry = run_benchmarks(
        ["attention"], model=tiny_llama, progress=False, settings=BenchSettings(mc_questions=3)
    )
    entry = entry["results"]["attention"]
    assert entry["prompts"] == 64 and entry["mc_questions"] == 3
    for task in ("generation", "mc"):
        ratio = entry[f"{task}_bridge_s"] / entry[f"{task}_fast_s"]
        assert entry[f"{task}_speedup"] == pytest.approx(ratio, rel=0.05)
    assert entry["generation_same_tokens"] == 1.0  # float32: the same computation
    assert entry["mc_max_abs_log_prob_difference"] < 1e-4
    assert entry["mc_decisions_differing"] == 0
    assert entry["mc_answers"] > 0
    assert entry["mc_max_abs_log_prob_difference_same_decision"] < 1e-4


def test_bench_reproduce_extrapolates_a_subset(
    tiny_llama, monkeypatch, tmp_path, small_searches
) -> None:
    from functools import partial

    from fasb_lens.bench import reproduce
    from fasb_lens.evaluation.config import ExperimentConfig

    grids = {"fixed": (1.0, 4.0), "fasb": (1.0, 4.0), "caa": (0.5, 2.0)}
    small = partial(
        ExperimentConfig,
        policies=("none", "fixed", "fasb", "fasb_random"),
        judges=("bleu-acc", "info-check"),
        max_new_tokens=4,
        top_k=4,
        top_k_candidates=(2, 4),
        caa_layer=1,
    )
    monkeypatch.setattr(reproduce, "ExperimentConfig", small)
    kept = tmp_path / "run"
    sizes = BenchSettings(reproduce_questions=8, reproduce_out=str(kept))
    with small_searches(grids):
        report = run_benchmarks(["reproduce"], model=tiny_llama, progress=False, settings=sizes)
    entry = report["results"]["reproduce"]
    assert (kept / "table.md").is_file()  # the timed run is kept for its tables and figures
    with pytest.raises(ValueError, match="not empty"):
        run_benchmarks(["reproduce"], model=tiny_llama, progress=False, settings=sizes)
    assert entry["questions"] == 8 and entry["dataset_questions"] == 94  # the mini set
    assert entry["dtype"] == report["dtype"] == "float32"  # the bench model's, recorded
    assert entry["full_s"] == pytest.approx(entry["wall_s"] * 94 / 8, abs=1)
    assert set(entry["phases"]) >= {"anchoring and calibration", "multiple choice", "generation"}
    assert sum(entry["phases"].values()) <= entry["wall_s"] + 1


def test_bench_ablation_on_a_tiny_model(tiny_llama) -> None:
    report = run_benchmarks(
        ["ablation"],
        model=tiny_llama,
        data_dir=None,
        progress=False,
        settings=BenchSettings(ablation_questions=2),
    )
    entry = report["results"]["ablation"]
    assert entry["heads"] == 16 and entry["questions"] == 2
    assert entry["max_abs_difference"] < 1e-4  # the engine equals the loop on sampled heads
    assert entry["speedup"] == pytest.approx(entry["loop_s"] / entry["exact_s"], rel=0.1, abs=0.06)
    assert entry["naive_loop_s"] > 0 and entry["attribution_s"] > 0
    assert -1 <= entry["attribution_rank_correlation"] <= 1
    assert entry["exact_gflop"] > 0 and entry["matmul_gflops"] > 0
    assert entry["exact_floor_s"] == pytest.approx(
        entry["exact_gflop"] / entry["matmul_gflops"], rel=0.05, abs=0.1
    )
    assert entry["loop_gflop"] > entry["exact_gflop"]  # the engine saves the layers below
    json.dumps(report)
