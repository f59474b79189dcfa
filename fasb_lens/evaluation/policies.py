"""The policies a run evaluates, each built by its registration from the run's settings.

Both suites build a policy the same way: the run's settings, the strength a policy has
when nothing is calibrated (``--strength NAME=VALUE``, its registration's default, or
``--alpha``), then the calibrated strength, threshold and tracker where a calibration
chose them; a control gets the seed of its draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.config import TASKS, ExperimentConfig
from fasb_lens.policies import Policy, PolicySettings, policy_spec, uncalibrated_strength
from fasb_lens.steering import CAAVector


def build_policy(
    name: str,
    base: PolicySettings,
    *,
    strengths: Sequence[str] = (),
    calibration: Calibration | None = None,
    task: str = "mc",
    seed: int | None = None,
) -> Policy:
    """The policy ``name`` from ``base`` (see the module docstring)."""
    settings = replace(base, alpha=uncalibrated_strength(name, strengths, base.alpha))
    if calibration is not None:
        settings = calibration.settings(task, name, settings)
    if seed is not None:
        settings = replace(settings, seed=seed)
    return policy_spec(name).build(settings)


def policy_draws(config: ExperimentConfig, task: str) -> list[tuple[str, str, int | None]]:
    """``(label, name, draw)`` of every policy a TruthfulQA run evaluates on ``task``: a
    control once per draw, labelled ``NAME/DRAW``."""
    found = []
    for name in (n for n in config.policies if task in policy_spec(n).tasks):
        draws = range(config.control_seeds) if policy_spec(name).control_of else [None]
        found += [(name if draw is None else f"{name}/{draw}", name, draw) for draw in draws]
    return found


def question_label(label: str) -> str | None:
    """The leak-free protocol's row for a policy's label (``fasb`` -> ``fasb_question``,
    ``fasb_random/1`` -> ``fasb_random_question/1``); ``None`` where the policy has none."""
    base, _, draw = label.partition("/")
    if not policy_spec(base).leak_free:
        return None
    return f"{base}_question" + (f"/{draw}" if draw else "")


def run_policies(
    config: ExperimentConfig, caa: CAAVector | None, calibration: Calibration | None
) -> dict[str, dict[str, Policy]]:
    """A TruthfulQA run's policies per task (controls once per draw, as ``NAME/DRAW``)."""
    tracker = calibration.tracker if calibration is not None else config.tracker
    base = replace(config.settings(), tracker="probe" if tracker == "auto" else tracker, caa=caa)
    return {
        task: {
            label: build_policy(
                name,
                base,
                strengths=config.strengths,
                calibration=calibration,
                task=task,
                seed=draw,
            )
            for label, name, draw in policy_draws(config, task)
        }
        for task in TASKS
    }
