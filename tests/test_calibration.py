"""Calibration: the threshold rule, the per-task strength sweeps, saving."""

from __future__ import annotations

import math

import pytest

from fasb_lens.data import load_mini_truthfulqa, load_prompt_format
from fasb_lens.evaluation import calibration as calibration_module
from fasb_lens.evaluation.calibration import Calibration, calibrate, choose_threshold


def test_threshold_separates_untruthful_answers() -> None:
    readings = [0.2, 0.3, 0.35, 0.6, 0.7, 0.8]
    truthful = [False, False, True, True, True, True]
    threshold, j, sweep = choose_threshold(readings, truthful, fallback=0.6)
    assert threshold == pytest.approx(0.325)  # between the last untruthful and first truthful
    assert j == pytest.approx(1.0)
    row = next(r for r in sweep if r["threshold"] == threshold)
    assert (row["tpr"], row["fpr"], row["triggered"]) == (1.0, 0.0, pytest.approx(2 / 6))


def test_threshold_prefers_triggering_less_on_ties() -> None:
    threshold, j, _ = choose_threshold([0.5, 0.5, 0.5], [True, False, True], fallback=0.6)
    assert j == pytest.approx(0.0) and threshold == 0.0  # no separation: never trigger


def test_threshold_falls_back_with_one_class() -> None:
    threshold, j, _ = choose_threshold([0.1, 0.9], [True, True], fallback=0.6)
    assert threshold == 0.6 and math.isnan(j)


def test_calibrate_on_a_tiny_model(tiny_llama, tiny_anchoring, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(calibration_module, "MC_ALPHAS", (1.0, 2.0))
    monkeypatch.setattr(calibration_module, "GENERATION_ALPHAS", (4.0,))
    questions = load_mini_truthfulqa()[:10]
    steering = tiny_anchoring.steering
    result = calibrate(
        tiny_llama,
        questions[:4],
        steering,
        fmt=load_prompt_format(),
        backtrack_tokens=2,
        max_new_tokens=5,
        mc_source="csv",
        sweep_questions=2,
        progress=False,
    )
    mc = [r for r in result.alpha_sweep if r["task"] == "mc"]
    assert {(r["method"], r["alpha"]) for r in mc} == {
        ("fixed", 1.0),
        ("fixed", 2.0),
        ("fasb", 1.0),
        ("fasb", 2.0),
    }
    assert set(result.strengths) == {"mc", "generation"}
    assert result.strengths["generation"] == {"fixed": 4.0, "fasb": 4.0}
    assert result.strength("mc", "fasb_no_backtrack") == result.strengths["mc"]["fasb"]
    assert len(result.readings["first_check"]) == 4
    result.save(tmp_path)
    assert Calibration.load(tmp_path) == result
    none = calibrate(
        tiny_llama,
        questions[:2],
        steering,
        fmt=load_prompt_format(),
        backtrack_tokens=2,
        max_new_tokens=3,
        mc_source="csv",
        tasks=(),
        progress=False,
    )
    assert none.strengths == {} and none.strength("generation", "fasb") is None
