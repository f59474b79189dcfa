"""Train / validation / test splits of questions, never of single answers.

A probe must not see any answer of a question it is validated or tested on, so splits are
made over question ids and a prompt follows its question (its ``group``). Two protocols:

* :func:`authors_folds`: the FASB/ITI protocol, bit for bit. Questions in the authors'
  order (``mc_task.json``'s, see :func:`authors_question_order`) are cut into ``n_folds``
  contiguous folds; for each fold the other folds are the training pool, and a NumPy
  ``RandomState(seed)``, seeded once and drawn from fold after fold, picks 80% of the pool
  for training and leaves the rest for validation.
* :func:`kfold_splits`: plain shuffled k-fold with the same validation carve-out.

:func:`holdout_split` (one seeded test / validation / training split, for the
multiple-choice datasets) and :func:`train_val_split` (no test side) complete the set;
every suite splits through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from fasb_lens.data.schema import TruthfulQAQuestion
from fasb_lens.options import FRACTION, Bounds, option


@dataclass(frozen=True)
class SplitSettings:
    """How questions are split into folds; every default is written here once (the
    authors' protocol: 2 folds, 20% of each training pool for validation, seed 42)."""

    n_folds: int = option(
        2, help="cross-validation folds", flags=("--n-folds", "--folds"), bounds=Bounds(minimum=2)
    )
    val_fraction: float = option(
        0.2, help="share of each training pool held out for validation", bounds=FRACTION
    )
    seed: int = option(42, help="seed of the folds' validation draws (the authors': 42)")


@dataclass(frozen=True)
class Split:
    """Question ids for training, validation and (optionally) testing."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...] = ()
    protocol: str = "custom"
    fold: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("a split needs at least one training question")
        sides = [set(self.train), set(self.val), set(self.test)]
        if sum(map(len, sides)) != len(set().union(*sides)):
            raise ValueError("a question appears on two sides of the split")

    def rows(self, groups: Sequence[str], side: str) -> Int[np.ndarray, " rows"]:
        """Indices of the prompts (by their question ``groups``) on ``side``."""
        if side not in ("train", "val", "test"):
            raise ValueError(f"side must be 'train', 'val' or 'test', got {side!r}")
        wanted = set(getattr(self, side))
        return np.array([i for i, group in enumerate(groups) if group in wanted], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "fold": self.fold,
            "seed": self.seed,
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        return cls(
            train=tuple(data["train"]),
            val=tuple(data["val"]),
            test=tuple(data.get("test", ())),
            protocol=data.get("protocol", "custom"),
            fold=int(data.get("fold", 0)),
            seed=data.get("seed"),
        )


def authors_question_order(questions: Sequence[TruthfulQAQuestion]) -> list[str]:
    """Question ids in the order the authors split folds in: ``mc_task.json``'s.

    Questions loaded without ``mc_task.json`` keep their file order.
    """
    if all(question.mc_order is not None for question in questions):
        ordered = sorted(questions, key=lambda question: question.mc_order)
    else:
        ordered = list(questions)
    return [question.id for question in ordered]


def _check(question_ids: Sequence[str], n_folds: int, val_fraction: float) -> None:
    if len(set(question_ids)) != len(question_ids):
        raise ValueError("question ids must be unique")
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    if len(question_ids) < max(n_folds, 2):
        raise ValueError(
            f"{len(question_ids)} questions cannot be split into {n_folds} folds "
            "with a validation set; need at least max(n_folds, 2) questions"
        )
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")


def _carve_validation(
    pool: np.ndarray, rng: np.random.RandomState, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``1 - val_fraction`` of ``pool`` for training; the rest, in pool order, validates."""
    size = int(len(pool) * (1 - val_fraction))
    if size == 0 or size == len(pool):
        raise ValueError(
            f"a training pool of {len(pool)} questions leaves no room for both training "
            f"and validation at val_fraction={val_fraction}"
        )
    train = rng.choice(pool, size=size, replace=False)
    chosen = set(train.tolist())
    return train, np.array([index for index in pool if index not in chosen])


def authors_folds(
    question_ids: Sequence[str],
    *,
    n_folds: int = SplitSettings.n_folds,
    val_fraction: float = SplitSettings.val_fraction,
    seed: int = SplitSettings.seed,
) -> list[Split]:
    """The FASB/ITI cross-validation: contiguous folds, seeded validation draws.

    ``question_ids`` must be in the authors' order (:func:`authors_question_order`).
    """
    _check(question_ids, n_folds, val_fraction)
    if n_folds < 2:
        raise ValueError("the authors' protocol needs at least 2 folds")
    folds = np.array_split(np.arange(len(question_ids)), n_folds)
    return _cross_validation(
        question_ids,
        folds,
        np.random.RandomState(seed),
        val_fraction,
        protocol="authors",
        seed=seed,
    )


def _cross_validation(
    question_ids: Sequence[str],
    folds: list[np.ndarray],
    rng: np.random.RandomState,
    val_fraction: float,
    *,
    protocol: str,
    seed: int,
) -> list[Split]:
    """Each fold in turn held out; the other folds' questions carved into train and val."""
    ids = np.array(list(question_ids), dtype=object)
    splits = []
    for fold, test in enumerate(folds):
        pool = np.concatenate([folds[other] for other in range(len(folds)) if other != fold])
        train, val = _carve_validation(pool, rng, val_fraction)
        splits.append(
            Split(
                train=tuple(ids[train]),
                val=tuple(ids[val]),
                test=tuple(ids[np.sort(test)]),
                protocol=protocol,
                fold=fold,
                seed=seed,
            )
        )
    return splits


def kfold_splits(
    question_ids: Sequence[str],
    *,
    n_folds: int = 5,
    val_fraction: float = SplitSettings.val_fraction,
    seed: int = 0,
) -> list[Split]:
    """Shuffled k-fold over questions, each training pool carved into train and validation."""
    _check(question_ids, n_folds, val_fraction)
    if n_folds < 2:
        raise ValueError("k-fold needs at least 2 folds; use train_val_split for one split")
    rng = np.random.RandomState(seed)
    folds = np.array_split(rng.permutation(len(question_ids)), n_folds)
    return _cross_validation(question_ids, folds, rng, val_fraction, protocol="kfold", seed=seed)


def train_val_split(
    question_ids: Sequence[str],
    *,
    val_fraction: float = SplitSettings.val_fraction,
    seed: int = SplitSettings.seed,
) -> Split:
    """All questions into training and validation only (no test side), seeded."""
    _check(question_ids, 1, val_fraction)
    ids = np.array(list(question_ids), dtype=object)
    train, val = _carve_validation(np.arange(len(ids)), np.random.RandomState(seed), val_fraction)
    return Split(train=tuple(ids[train]), val=tuple(ids[val]), protocol="train_val", seed=seed)


def subsample_train(split: Split, fraction: float, seed: int) -> Split:
    """``split`` with only ``fraction`` of its training questions, drawn with ``seed``.

    Validation and test questions stay whole, so runs with different fractions are scored
    on the same questions: the paper's data-efficiency study.
    """
    if fraction == 1.0:
        return split
    generator = torch.Generator().manual_seed(seed)
    keep = max(1, round(fraction * len(split.train)))
    chosen = sorted(torch.randperm(len(split.train), generator=generator)[:keep].tolist())
    return replace(split, train=tuple(split.train[i] for i in chosen))


def holdout_split(
    ids: Sequence[str],
    *,
    seed: int,
    test_fraction: float = 0.5,
    val_fraction: float = SplitSettings.val_fraction,
) -> Split:
    """A seeded split of ``ids``: ``test_fraction`` held out, then ``val_fraction`` of the
    rest for validation. Each side keeps the ids' order; every side must receive one."""
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    array = np.array(list(ids), dtype=object)
    order = np.random.RandomState(seed).permutation(len(array))
    n_test = round(len(array) * test_fraction)
    n_val = round((len(array) - n_test) * val_fraction)
    test, val, train = np.split(order, [n_test, n_test + n_val])
    if not (len(test) and len(val) and len(train)):
        raise ValueError(
            f"{len(array)} items cannot be split into non-empty train, validation and test "
            f"sides at test_fraction={test_fraction}, val_fraction={val_fraction}"
        )
    return Split(
        train=tuple(array[np.sort(train)]),
        val=tuple(array[np.sort(val)]),
        test=tuple(array[np.sort(test)]),
        protocol="mc_holdout",
        seed=seed,
    )
