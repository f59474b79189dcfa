"""Extending fasb_lens: a policy and a tracker registered here, and nowhere else, are
anchored, calibrated, evaluated and tabled by a whole ``reproduce`` run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from fasb_lens._types import Head
from fasb_lens.decisions import CONTINUE, PASSED, Check, Decision, Policy, Trigger
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.experiment import Experiment
from fasb_lens.policies import POLICIES, PolicySettings, PolicySpec, StrengthSearch
from fasb_lens.steering import Steering
from fasb_lens.trackers import TRACKERS, FitData, TrackerSpec


@dataclass(frozen=True)
class MidpointTracker:
    """Per head, which class mean the activation is nearer to, softly: a linear
    classifier through the midpoint of the two class means."""

    heads: tuple[Head, ...]
    weight: Tensor
    bias: Tensor

    def head_probabilities(self, z: Tensor) -> Tensor:
        return torch.sigmoid((z * self.weight.to(z)).sum(-1) + self.bias.to(z))

    def p_true(self, z: Tensor) -> Tensor:
        return self.head_probabilities(z).mean(-1)


def midpoint_fit(data: FitData) -> dict[str, Tensor]:
    true = data.z[data.labels == 1].mean(0)
    false = data.z[data.labels == 0].mean(0)
    weight = true - false
    return {"weight": weight, "bias": -(weight * (true + false) / 2).sum(-1)}


def midpoint_build(heads: tuple[Head, ...], tensors: Mapping[str, Tensor]) -> MidpointTracker:
    return MidpointTracker(heads, tensors["weight"], tensors["bias"])


@dataclass(frozen=True)
class Gated(Policy):
    """Decide once at the prompt's end: below the threshold, steer the whole answer."""

    alpha: float = 1.0
    threshold: float = 0.5
    tracker: str = "probe"
    name: str = "gated"

    @property
    def decides(self) -> bool:
        return True

    def may_trigger(self, triggers: int) -> bool:
        return triggers == 0

    def intervention(self, steering: Any) -> Any:
        return steering

    def decide(self, check: Check) -> Decision:
        if not check.at_prompt_end:
            return CONTINUE
        if check.p_true >= self.threshold:
            return PASSED
        return Decision(True, Trigger(self.alpha, 0, check.p_true))


def gated(settings: PolicySettings) -> Gated:
    return Gated(settings.alpha, settings.threshold, settings.tracker)


TRACKER = TrackerSpec(
    name="midpoint",
    description="nearest class mean, softly",
    tensors=("weight", "bias"),
    fit=midpoint_fit,
    build=midpoint_build,
)
POLICY = PolicySpec(
    name="gated",
    build=gated,
    description="steer the whole answer when the question reads untruthful",
    search=StrengthSearch({"mc": (1.0, 4.0), "generation": (1.0, 4.0)}),
)


def test_a_registered_policy_and_tracker_join_a_reproduce_run(
    tiny_llama, tmp_path, small_searches
) -> None:
    config = dict(
        data="mini",
        n_questions=8,
        policies=("none", "fixed", "fasb", "gated"),
        judges=("bleu-acc", "info-check"),
        tracker="midpoint",
        top_k=4,
        backtrack_tokens=2,
        max_new_tokens=6,
        mc_source="csv",
        batch_size=4,
        top_k_candidates=(2, 4),
    )
    grids = {"fixed": (1.0, 4.0), "fasb": (1.0, 4.0)}
    with (
        TRACKERS.registered(TRACKER),
        POLICIES.registered(POLICY),
        small_searches(grids, quantiles=(0.5,)),
    ):
        summary = Experiment(
            ExperimentConfig(**config), tmp_path, model=tiny_llama, progress=False
        ).run()
        steering = Steering.load(tmp_path / "folds" / "seed42" / "fold0")
        assert "midpoint" in steering.trackers  # anchoring fitted it, the artifact keeps it
    assert "gated" in summary["policies"]  # in the table
    assert "| gated |" in (tmp_path / "table.md").read_text()
    for fold in (0, 1):
        calibration = json.loads(
            (tmp_path / "folds" / "seed42" / f"fold{fold}" / "calibration.json").read_text()
        )
        assert calibration["tracker"] == "midpoint"
        for task in ("mc", "generation"):
            assert set(calibration["strengths"][task]) == {"fasb", "fixed", "gated"}
            rows = [row for row in calibration["sweep"] if row["task"] == task]
            counts = {
                name: sum(row["policy"] == name for row in rows) for name in ("fixed", "gated")
            }
            assert counts["gated"] >= counts["fixed"] > 0  # searched like every policy
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    gated_records = [r for r in records if r["policy"] == "gated"]
    assert {r["task"] for r in gated_records} == {"mc", "generation"}
    assert all(
        r["trace"]["tracker"] == "midpoint" for r in gated_records if r["task"] == "generation"
    )
    assert "gated" not in POLICIES and "midpoint" not in TRACKERS  # gone after the block
    with pytest.raises(ValueError, match="tracker must be one of .*; got .midpoint."):
        ExperimentConfig(data="mini", tracker="midpoint")
