"""The policies a TruthfulQA run evaluates, per task, from its settings and calibration."""

from __future__ import annotations

from fasb_lens.evaluation.calibration import Calibration
from fasb_lens.evaluation.config import CONTROLS, TASKS, ExperimentConfig
from fasb_lens.policies import Policy, make_policy, policy_spec
from fasb_lens.steering import CAAVector


def run_policies(
    config: ExperimentConfig, caa: CAAVector | None, calibration: Calibration | None
) -> dict[str, dict[str, Policy]]:
    """Each task's policies (controls once per draw, as ``NAME/DRAW``); strengths,
    thresholds and the tracker from the calibration if any."""
    fixed = config.alpha if config.fixed_alpha is None else config.fixed_alpha
    defaults = {"caa": config.caa_alpha, "fixed": fixed}
    tracker = calibration.tracker if calibration is not None else config.tracker
    tracker = "probe" if tracker == "auto" else tracker
    policies: dict[str, dict[str, Policy]] = {}
    for task in TASKS:
        chosen = calibration.threshold(task) if calibration is not None else None
        threshold = config.threshold if chosen is None else chosen
        policies[task] = {}
        for name in config.methods:
            spec = policy_spec(name)
            strength = calibration.strength(task, name) if calibration is not None else None
            if strength is None:
                strength = defaults.get(spec.family, config.alpha)
            options = {"tracker": tracker} if spec.family in ("fasb", "none") else {}
            seeds = range(config.control_seeds) if name in CONTROLS else [None]
            for seed in seeds:
                extra = {} if seed is None else {"seed": seed}
                label = name if seed is None else f"{name}/{seed}"
                policies[task][label] = make_policy(
                    name,
                    alpha=strength,
                    threshold=threshold,
                    backtrack_tokens=config.backtrack_tokens,
                    caa=caa,
                    **options,
                    **extra,
                )
    return policies
