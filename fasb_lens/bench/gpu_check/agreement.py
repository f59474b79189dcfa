"""Token lists compared: where two runs' answers part, and whether that is a bug or the
rounding of half precision turning a near-tie."""

from __future__ import annotations

from collections.abc import Sequence

from fasb_lens.bench.gpu_check.results import Status


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where two token lists differ (``None``: equal)."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def token_agreement(first: Sequence[Sequence[int]], second: Sequence[Sequence[int]]) -> dict:
    """How many answers are token-equal, and where the first differing one differs."""
    pairs = enumerate(zip(first, second, strict=True))
    differ = [(i, first_difference(a, b)) for i, (a, b) in pairs]
    differ = [(i, at) for i, at in differ if at is not None]
    return {
        "equal": len(first) - len(differ),
        "answers": len(first),
        "first_difference": None if not differ else {"answer": differ[0][0], "token": differ[0][1]},
    }


def agreement_status(agreement: dict, half: bool, what: str) -> tuple[Status, str]:
    """``ok`` when every answer is equal; a minority of answers that part from a token on
    (rounding turning a near-tie, most likely in half precision) warns; a majority fails."""
    equal, total = agreement["equal"], agreement["answers"]
    detail = f"{equal}/{total} answers {what}"
    if equal == total:
        return "ok", detail
    where = agreement["first_difference"]
    detail += f"; answer {where['answer']} differs from token {where['token']}"
    if equal >= total / 2:
        rounding = "half-precision rounding" if half else "rounding"
        return "warn", detail + f" ({rounding} turning a near-tie?)"
    return "FAIL", detail
