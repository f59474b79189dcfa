"""A check's result, and the one way a check's body records it (:func:`timed`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warn", "FAIL", "skipped"]


@dataclass
class CheckResult:
    """One check: what it compared, how it went, what it found, how long it took."""

    name: str
    dtype: str
    status: Status
    detail: str
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The check as one report line."""
        name = f"{self.dtype:<9} {self.name} ".ljust(52, ".")
        return f"{name} {self.status:<7} {self.detail} ({self.seconds:.1f} s)"


@contextmanager
def timed(results: list[CheckResult], name: str, dtype: str) -> Iterator[dict[str, Any]]:
    """Run a check's body; it fills ``found`` (status, detail, numbers). A crash is a FAIL
    whose detail is the error."""
    found: dict[str, Any] = {"status": "ok", "detail": "", "numbers": {}}
    start = time.perf_counter()
    try:
        yield found
    except Exception as error:  # a crashing check is a failed one, the others still run
        found.update(status="FAIL", detail=f"{type(error).__name__}: {error}"[:300])
    results.append(
        CheckResult(
            name,
            dtype,
            found["status"],
            found["detail"],
            round(time.perf_counter() - start, 2),
            found["numbers"],
        )
    )
