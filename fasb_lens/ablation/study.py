"""Per-head studies as results: a grid per study, saved, resumed, compared.

:func:`ablation_study` runs one of the engines over every (or some) head and returns a
:class:`AblationGrid`: the metric under each head's ablation, the clean value and how it
was obtained. With ``out`` it appends each finished layer to ``ablation.jsonl`` (an
interrupted study resumes from there) and saves the grid as ``NAME.safetensors`` +
``NAME.json``. :func:`fasb_heads_study` links the grids to the method: what ablating each
anchored head does to the tracker, to multiple choice and to FASB's trigger rate.

Under ``torchrun`` (:mod:`fasb_lens.distributed`) the exact and loop engines share the
layers still to do: each process runs its layers (laid out as for all of them), logs them
to its own part of ``ablation.jsonl``, and the processes exchange the values; attribution,
one forward and one backward, runs in the main process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens import distributed, storage
from fasb_lens._types import Head, HeadGrid
from fasb_lens.ablation.attribution import attribution_effects
from fasb_lens.ablation.edits import KINDS, AblationKind, make_edits
from fasb_lens.ablation.exact import exact_effects, loop_effects
from fasb_lens.ablation.metrics import Metric, p_true_metric
from fasb_lens.activations import HeadActivations
from fasb_lens.data import PromptFormat, TruthfulQAQuestion, probing_prompts
from fasb_lens.interventions import hooked, replace_heads
from fasb_lens.models import ModelShape, model_id, model_shape
from fasb_lens.multiple_choice import AnswerSource, evaluate_mc
from fasb_lens.options import AT_LEAST_ONE, check_options, option
from fasb_lens.policies import FASB, Unsteered
from fasb_lens.steering import Steering

Estimator = Literal["exact", "loop", "attribution"]
"""How a grid's values are obtained: ``"exact"`` (the batched engine, every head's edit
run), ``"loop"`` (one full evaluation per head, the reference) or ``"attribution"`` (a
first-order estimate from one forward and one backward)."""
ESTIMATORS: tuple[Estimator, ...] = ("exact", "loop", "attribution")


@dataclass(frozen=True)
class AblationSettings:
    """How a per-head study edits each head and estimates the metric; every default of
    :func:`ablation_study` and of ``fasb-lens ablate`` is written here."""

    estimator: Estimator = option(
        "exact",
        help="exact: the batched engine; loop: one full evaluation per head (the reference); "
        "attribution: the first-order estimate",
        flags=("--estimator", "--method"),
        choices=ESTIMATORS,
    )
    kind: AblationKind = option(
        "zero", help="what each head gets", flags=("--kind", "--mode"), choices=KINDS
    )
    strength: float = option(5.0, help="alpha for --kind steer")
    samples: int = option(4, help="draws for --kind resample", bounds=AT_LEAST_ONE)
    seed: int = option(0, help="seed of the resample draws")

    def __post_init__(self) -> None:
        check_options(self)


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
    estimator: str
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
        """The grid's file name: ``ablation_{estimator}_{metric}_{kind}``."""
        return f"{storage.ABLATION}_{self.estimator}_{self.metric}_{self.kind}"

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
            "estimator": self.estimator,
            "model_id": self.model_id,
            "info": self.info,
        }
        with storage.staged(folder) as stage:
            storage.save_artifact(stage, self.name, {"values": self.values.float()}, meta)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, name: str) -> AblationGrid:
        tensors, meta = storage.load_artifact(
            folder, name, tensors=("values",), meta=("baseline", "metric", "kind", "model_id")
        )
        return cls(
            tensors["values"],
            meta["baseline"],
            meta["metric"],
            meta["kind"],
            _estimator_of(meta),
            meta["model_id"],
            meta.get("info", {}),
        )


def _estimator_of(record: dict[str, Any]) -> str:
    """A grid's or a log record's estimator (written as ``"method"`` before it had a name
    of its own, which such files still carry)."""
    return record.get("estimator", record.get("method"))


def _log_key(record: dict[str, Any]) -> tuple:
    return (_estimator_of(record), record["metric"], record["kind"], str(record["head"]))


@dataclass
class _StudyLog:
    """A study's finished heads and clean value, from ``ablation.jsonl`` (so an interrupted
    study resumes), and the appending of new ones; without a folder, memory only."""

    estimator: str
    metric: str
    kind: str
    log: storage.JsonlLog | None = None
    done: dict[Head, float] = field(default_factory=dict)
    baseline: float | None = None

    @classmethod
    def open(cls, out: str | Path | None, estimator: str, metric: str, kind: str) -> _StudyLog:
        log = storage.JsonlLog(Path(out) / storage.ABLATION_LOG, _log_key) if out else None
        study = cls(estimator, metric, kind, log)
        for record in log.values() if log is not None else ():
            if (_estimator_of(record), record["metric"], record["kind"]) != (
                estimator,
                metric,
                kind,
            ):
                continue
            if record["head"] == "baseline":
                study.baseline = record["value"]
            else:
                study.done[Head(*record["head"])] = record["value"]
        return study

    def _append(self, head: Any, value: float) -> None:
        if self.log is not None:
            self.log.append(
                {
                    "estimator": self.estimator,
                    "metric": self.metric,
                    "kind": self.kind,
                    "head": head,
                    "value": value,
                }
            )

    def finished(self, layer: int, values: dict[Head, float]) -> None:
        """Keep one layer's (or, for attribution, every head's) values."""
        self.done.update(values)
        for head, value in values.items():
            self._append(list(head), value)

    def clean(self, value: float) -> float:
        """Keep the clean value, unless a resumed study already had one; the kept one."""
        if self.baseline is None:
            self._append("baseline", value)
            self.baseline = value
        return self.baseline

    def exchange(self, new: dict[Head, float]) -> None:
        """Every process's ``new`` values and clean value, so each holds the whole study
        (nothing to do with one process)."""
        if distributed.world_size() == 1:
            return
        mine = {"values": [[*head, value] for head, value in new.items()], "clean": self.baseline}
        for theirs in distributed.gather_json(mine):
            self.done.update({Head(layer, head): value for layer, head, value in theirs["values"]})
            if self.baseline is None:
                self.baseline = theirs["clean"]


def _estimate(
    model: TransformerBridge,
    metric: Metric,
    todo: dict[Head, Any],
    study: _StudyLog,
    estimator: str,
    progress: bool,
) -> dict[Head, float]:
    """Run ``estimator`` on the heads ``todo`` (this process's share of their layers under
    ``torchrun``), logging each finished layer and the clean value; the values it found."""
    if estimator == "attribution":
        if not distributed.is_main():
            return {}
        clean, estimates, _ = attribution_effects(model, metric, todo, progress=progress)
        new = {head: clean + change for head, change in estimates.items()}
        study.finished(-1, new)
        study.clean(clean)
        return new
    run = exact_effects if estimator == "exact" else loop_effects
    mine = distributed.share(sorted({head.layer for head in todo}))
    clean, new = run(
        model,
        metric,
        todo,
        on_layer=study.finished,
        progress=progress,
        layers=mine if distributed.world_size() > 1 else None,
    )
    study.clean(clean)
    return new


def ablation_study(
    model: TransformerBridge,
    metric: Metric,
    settings: AblationSettings | None = None,
    *,
    heads: Sequence[Head] | None = None,
    means: Tensor | None = None,
    reference: HeadActivations | None = None,
    steering: Steering | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    **changes: Any,
) -> AblationGrid:
    """The metric with each head ablated (or steered) alone.

    Args:
        settings: the study's :class:`AblationSettings`; ``changes`` replace some of them
            (``kind="mean"``, ``estimator="attribution"``, ...). ``kind`` is ``"zero"``,
            ``"mean"`` (needs ``means``), ``"resample"`` (needs ``reference``
            activations; ``samples`` draws per head, seeded) or ``"steer"`` (adds
            ``strength`` times each head's vector from ``steering``).
        heads: heads to study (default: every head).
        out: folder for ``ablation.jsonl`` (finished layers are not recomputed) and the grid.
    """
    settings = replace(settings or AblationSettings(), **changes)
    estimator, kind = settings.estimator, settings.kind
    shape = model_shape(model)
    heads = list(heads) if heads is not None else shape.heads
    for head in heads:
        shape.check_head(head)
    edits = make_edits(
        heads,
        kind,
        means=means,
        reference=reference,
        samples=settings.samples,
        seed=settings.seed,
        steering=steering,
        strength=settings.strength,
    )
    study = _StudyLog.open(out, estimator, metric.name, kind)
    distributed.barrier()  # every process has read the log before any appends to it
    # a layer with any head missing is done again whole: its heads share forwards, so a
    # resumed study's values equal an uninterrupted one's
    unfinished = {head.layer for head in edits if head not in study.done}
    todo = {head: value for head, value in edits.items() if head.layer in unfinished}
    start = time.perf_counter()
    new: dict[Head, float] = {}
    if todo or study.baseline is None:
        new = _estimate(model, metric, todo, study, estimator, progress)
    study.exchange(new)  # every process has appended all it computed
    if study.log is not None and distributed.is_main():
        study.log.merge_parts()
    baseline = study.baseline
    assert baseline is not None
    values = torch.full((shape.n_layers, shape.n_heads), float("nan"))
    for head in heads:
        values[head.layer, head.head] = study.done[head]
    info = {
        "heads": len(heads),
        "seconds": round(time.perf_counter() - start, 2),
        "samples": settings.samples if kind == "resample" else None,
        "strength": settings.strength if kind == "steer" else None,
    }
    grid = AblationGrid(values, baseline, metric.name, kind, estimator, model_id(model), info)
    if out is not None and distributed.is_main():
        grid.save(out)
    return grid


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
