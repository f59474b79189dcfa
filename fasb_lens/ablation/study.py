"""Per-head studies as results: a grid per study, saved, resumed, compared.

:func:`ablation_study` runs one of the engines over every (or some) head and returns a
:class:`AblationGrid`: the metric under each head's ablation, the clean value and how it
was obtained. With ``out`` it appends each finished layer to ``ablation.jsonl`` (an
interrupted study resumes from there) and saves the grid as ``NAME.safetensors`` +
``NAME.json``. :func:`fasb_heads_study` links the grids to the method: what ablating each
anchored head does to the tracker, to multiple choice and to FASB's trigger rate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import storage
from fasb_lens._types import Head, HeadGrid
from fasb_lens.ablation.attribution import attribution_effects
from fasb_lens.ablation.edits import AblationKind, make_edits
from fasb_lens.ablation.exact import exact_effects, loop_effects
from fasb_lens.ablation.metrics import Metric, p_true_metric
from fasb_lens.activations import HeadActivations
from fasb_lens.data import PromptFormat, TruthfulQAQuestion, probing_prompts
from fasb_lens.interventions import hooked, replace_heads
from fasb_lens.models import ModelShape, model_id, model_shape
from fasb_lens.multiple_choice import AnswerSource, evaluate_mc
from fasb_lens.policies import FASB, Unsteered
from fasb_lens.steering import Steering

Method = Literal["exact", "loop", "attribution"]
METHODS: tuple[Method, ...] = ("exact", "loop", "attribution")


@dataclass
class AblationGrid:
    """The metric with each head ablated: ``values[layer, head]`` (NaN: not studied).

    ``effect`` is the change from the clean value ``baseline``; for attribution the grid
    holds the clean value plus the first-order estimate.
    """

    values: HeadGrid
    baseline: float
    metric: str
    kind: str
    method: str
    model_id: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def effect(self) -> HeadGrid:
        return self.values - self.baseline

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.values.shape[0], self.values.shape[1], 1)

    @property
    def name(self) -> str:
        """The grid's file name: ``ablation_{method}_{metric}_{kind}``."""
        return f"{storage.ABLATION}_{self.method}_{self.metric}_{self.kind}"

    def top(self, k: int = 10, *, largest_drop: bool = True) -> list[tuple[Head, float]]:
        """The heads whose ablation moved the metric most (most negative first)."""
        flat = self.effect.flatten()
        n_heads = self.effect.shape[1]
        valid = [i for i in range(len(flat)) if not torch.isnan(flat[i])]
        valid.sort(key=lambda i: float(flat[i]), reverse=not largest_drop)
        return [(Head(*divmod(i, n_heads)), float(flat[i])) for i in valid[:k]]

    def save(self, folder: str | Path) -> Path:
        meta = {
            "baseline": self.baseline,
            "metric": self.metric,
            "kind": self.kind,
            "method": self.method,
            "model_id": self.model_id,
            "info": self.info,
        }
        with storage.staged(folder) as stage:
            storage.save_artifact(stage, self.name, {"values": self.values.float()}, meta)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, name: str) -> AblationGrid:
        tensors, meta = storage.load_artifact(
            folder,
            name,
            tensors=("values",),
            meta=("baseline", "metric", "kind", "method", "model_id"),
        )
        return cls(
            tensors["values"],
            meta["baseline"],
            meta["metric"],
            meta["kind"],
            meta["method"],
            meta["model_id"],
            meta.get("info", {}),
        )


def _log_key(record: dict[str, Any]) -> tuple:
    head = record["head"]
    return (record["method"], record["metric"], record["kind"], str(head))


def ablation_study(
    model: TransformerBridge,
    metric: Metric,
    *,
    heads: Sequence[Head] | None = None,
    kind: AblationKind = "zero",
    method: Method = "exact",
    means: Tensor | None = None,
    reference: HeadActivations | None = None,
    steering: Steering | None = None,
    strength: float = 5.0,
    samples: int = 4,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> AblationGrid:
    """The metric with each head ablated (or steered) alone.

    Args:
        heads: heads to study (default: every head).
        kind: ``"zero"``, ``"mean"`` (needs ``means``), ``"resample"`` (needs
            ``reference`` activations; ``samples`` draws per head, seeded) or ``"steer"``
            (adds ``strength`` times each head's vector from ``steering``).
        method: ``"exact"`` (the batched engine), ``"loop"`` (one full evaluation per head,
            the reference) or ``"attribution"`` (the first-order estimate).
        out: folder for ``ablation.jsonl`` (finished layers are not recomputed) and the grid.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    shape = model_shape(model)
    heads = list(heads) if heads is not None else shape.heads
    for head in heads:
        shape.check_head(head)
    edits = make_edits(
        heads,
        kind,
        means=means,
        reference=reference,
        samples=samples,
        seed=seed,
        steering=steering,
        strength=strength,
    )
    log = storage.JsonlLog(Path(out) / storage.ABLATION_LOG, _log_key) if out else None
    done: dict[Head, float] = {}
    baseline = None
    if log is not None:
        for record in log.values():
            if (record["method"], record["metric"], record["kind"]) == (method, metric.name, kind):
                if record["head"] == "baseline":
                    baseline = record["value"]
                else:
                    done[Head(*record["head"])] = record["value"]
    todo = {head: value for head, value in edits.items() if head not in done}

    def remember(layer: int, values: dict[Head, float]) -> None:
        done.update(values)
        if log is not None:
            for head, value in values.items():
                log.append(_record(method, metric.name, kind, list(head), value))

    start = time.perf_counter()
    if todo or baseline is None:
        if method == "attribution":
            clean, estimates, _ = attribution_effects(model, metric, todo, progress=progress)
            remember(-1, {head: clean + change for head, change in estimates.items()})
        else:
            run = exact_effects if method == "exact" else loop_effects
            clean, _ = run(model, metric, todo, on_layer=remember, progress=progress)
        if baseline is None and log is not None:
            log.append(_record(method, metric.name, kind, "baseline", clean))
        baseline = clean if baseline is None else baseline
    values = torch.full((shape.n_layers, shape.n_heads), float("nan"))
    for head in heads:
        values[head.layer, head.head] = done[head]
    info = {
        "heads": len(heads),
        "seconds": round(time.perf_counter() - start, 2),
        "samples": samples if kind == "resample" else None,
        "strength": strength if kind == "steer" else None,
    }
    grid = AblationGrid(values, float(baseline), metric.name, kind, method, model_id(model), info)
    if out is not None:
        grid.save(out)
    return grid


def _record(method: str, metric: str, kind: str, head: Any, value: float) -> dict[str, Any]:
    return {"method": method, "metric": metric, "kind": kind, "head": head, "value": value}


@contextmanager
def ablated(
    model: TransformerBridge,
    heads: Sequence[Head],
    *,
    kind: Literal["zero", "mean"] = "zero",
    means: Tensor | None = None,
) -> Iterator[TransformerBridge]:
    """Replace ``heads``' ``hook_z`` at every position inside the ``with`` block: by zeros,
    or by ``means[layer, head]`` (e.g. ``activations.z.mean(0)``)."""
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind must be 'zero' or 'mean', got {kind!r}")
    shape = model_shape(model)
    for head in heads:
        shape.check_head(head)
    edits = make_edits(heads, kind, means=means)
    values = None if kind == "zero" else {head: edits[head][0].value for head in heads}
    with hooked(model, replace_heads(heads, values)):
        yield model


# --------------------------------------------------------------------------- FASB's heads


def fasb_heads_study(
    model: TransformerBridge,
    steering: Steering,
    questions: Sequence[TruthfulQAQuestion],
    *,
    fmt: PromptFormat,
    policy: FASB,
    heads: Sequence[Head] | None = None,
    source: AnswerSource = "mc_task",
    grid: AblationGrid | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """What zero-ablating each anchored head does to FASB, one row per head.

    For each head (default: every anchored head) and the clean model: the tracker's mean
    ``p_true`` on the questions' probing prompts, unsteered MC2 and MC1, FASB's MC2 and
    the share of answers on which FASB triggers, on ``questions``. With ``grid`` (an exact
    ablation grid), each row also gives the head's rank in it by ``|effect|``.
    """
    heads = list(heads) if heads is not None else list(steering.heads)
    reading = p_true_metric(model, probing_prompts(questions), steering, tracker=policy.tracker)
    policies = {"none": Unsteered(), "fasb": policy}
    rank = {}
    if grid is not None:
        order = sorted(
            (
                (abs(float(v)), Head(*divmod(i, grid.values.shape[1])))
                for i, v in enumerate(grid.effect.flatten())
                if not torch.isnan(v)
            ),
            reverse=True,
        )
        rank = {head: position + 1 for position, (_, head) in enumerate(order)}

    def measure(label: str) -> dict[str, Any]:
        rows = [
            evaluate_mc(model, q, policies, fmt=fmt, steering=steering, source=source)
            for q in questions
        ]
        answers = [a for r in rows for a in r["fasb"]["answers"]]
        return {
            "head": label,
            "p_true": reading(model),
            "mc2": sum(r["none"]["mc2"] for r in rows) / len(rows),
            "mc1": sum(r["none"]["mc1"] for r in rows) / len(rows),
            "fasb_mc2": sum(r["fasb"]["mc2"] for r in rows) / len(rows),
            "triggered": sum(a["triggered"] for a in answers) / len(answers),
        }

    table = [measure("clean")]
    for head in tqdm(heads, desc="FASB's heads", unit="head", disable=not progress):
        with ablated(model, [head]):
            row = measure(str(head))
        row["probe_val_accuracy"] = float(steering.val_accuracy[head])
        row["grid_rank"] = rank.get(head)
        table.append(row)
    return table


def rank_correlation(first: dict[Head, float], second: dict[Head, float]) -> float:
    """Spearman's rank correlation of two per-head values over their common heads."""
    heads = sorted(set(first) & set(second))
    if len(heads) < 2:
        raise ValueError("a rank correlation needs at least two heads")

    def ranks(values: list[float]) -> Tensor:
        order = torch.tensor(values, dtype=torch.float64).argsort()
        out = torch.empty(len(values), dtype=torch.float64)
        out[order] = torch.arange(len(values), dtype=torch.float64)
        return out

    a = ranks([first[h] for h in heads])
    b = ranks([second[h] for h in heads])
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
