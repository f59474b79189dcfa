"""Question-grouped splits: the authors' protocol bit for bit, and plain k-fold."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fasb_lens.data import load_mini_truthfulqa
from fasb_lens.splits import (
    Split,
    authors_folds,
    authors_question_order,
    kfold_splits,
    train_val_split,
)

IDS = [f"q{i:02d}" for i in range(23)]


def test_authors_folds_match_the_authors_numpy_calls() -> None:
    """The same calls as the authors' script: global seed once, then one draw per fold."""
    np.random.seed(42)
    folds = np.array_split(np.arange(len(IDS)), 2)
    expected = []
    for fold in range(2):
        pool = np.concatenate([folds[j] for j in range(2) if j != fold])
        train = np.random.choice(pool, size=int(len(pool) * (1 - 0.2)), replace=False)
        val = np.array([x for x in pool if x not in train])
        expected.append(
            ([IDS[i] for i in train], [IDS[i] for i in val], [IDS[i] for i in folds[fold]])
        )
    splits = authors_folds(IDS, n_folds=2, val_fraction=0.2, seed=42)
    assert [(list(s.train), list(s.val), list(s.test)) for s in splits] == expected
    assert [s.fold for s in splits] == [0, 1] and splits[0].protocol == "authors"


def test_splits_partition_questions() -> None:
    for split in authors_folds(IDS, n_folds=3) + kfold_splits(IDS, n_folds=4, seed=1):
        assert set(split.train) | set(split.val) | set(split.test) == set(IDS)
        assert len(split.train) + len(split.val) + len(split.test) == len(IDS)
    tests = [set(s.test) for s in kfold_splits(IDS, n_folds=4, seed=1)]
    assert set().union(*tests) == set(IDS) and sum(map(len, tests)) == len(IDS)


def test_kfold_is_seeded() -> None:
    assert kfold_splits(IDS, seed=3) == kfold_splits(IDS, seed=3)
    assert kfold_splits(IDS, seed=3) != kfold_splits(IDS, seed=4)


def test_train_val_split() -> None:
    split = train_val_split(IDS, val_fraction=0.25, seed=0)
    assert len(split.train) == int(23 * 0.75) and not split.test
    assert set(split.train) | set(split.val) == set(IDS)


def test_rows_follow_the_question_groups() -> None:
    split = Split(train=("a",), val=("b",), test=("c",))
    groups = ["a", "b", "a", "c", "b"]
    assert split.rows(groups, "train").tolist() == [0, 2]
    assert split.rows(groups, "val").tolist() == [1, 4]
    assert split.rows(groups, "test").tolist() == [3]
    assert Split.from_dict(split.to_dict()) == split


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: authors_folds(IDS[:1]), r"1 questions cannot be split into 2 folds"),
        (lambda: kfold_splits(IDS[:3], n_folds=5), r"3 questions cannot be split into 5 folds"),
        (lambda: authors_folds(IDS, val_fraction=1.5), r"val_fraction must be between 0 and 1"),
        (lambda: authors_folds(["a", "a", "b"]), r"question ids must be unique"),
        (lambda: authors_folds(IDS[:2]), r"leaves no room for both training and validation"),
        (lambda: Split(train=("a",), val=("a",)), r"appears on two sides"),
    ],
)
def test_bad_split_requests(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_authors_order_uses_mc_task_order() -> None:
    questions = load_mini_truthfulqa()[:4]
    assert authors_question_order(questions) == [q.id for q in questions]
    shuffled = [
        replace(q, mc_order=order) for q, order in zip(questions, [2, 0, 3, 1], strict=True)
    ]
    assert authors_question_order(shuffled) == [questions[i].id for i in (1, 3, 0, 2)]
