"""The run framework both evaluation suites share: a run folder that resumes.

A :class:`RunFolder` is where one command's run lives: its settings (``config.json``,
written on the first start; a later start with other settings is refused with the
settings that differ), its records (:meth:`RunFolder.log`: append-only JSON lines, keyed,
so a killed run loses at most the record being written), the seconds each phase took in
this session and where inside it they went (:meth:`RunFolder.phase`, into
``timings.json``; :mod:`fasb_lens.profiling`), and resumption by chunk
(:func:`pending_chunks`): work is done in chunks, and a chunk with anything missing is
done again whole, so that every record of a chunk comes from the same computation and a
resumed run's records equal an uninterrupted run's.

Several processes can share a run (``torchrun``; :mod:`fasb_lens.distributed`): the main
one writes ``config.json`` first, each appends to its own part of every log, and
:meth:`RunFolder.sync` (a barrier, then every log read again) lets each see the others'
records between phases; :meth:`RunFolder.finish` folds the parts into the logs. With one
process both do nothing more than a single run always did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fasb_lens import distributed, storage
from fasb_lens.profiling import Profile, profiling

T = TypeVar("T")


class Settings(Protocol):
    """A run's settings: a dataclass that converts to and from JSON-ready data."""

    def to_dict(self) -> dict[str, Any]: ...


class RunFolder:
    """A run directory: settings checked against ``config.json``, logs, phase timings."""

    def __init__(
        self,
        out: str | Path,
        settings: Settings,
        *,
        load: Callable[[dict[str, Any]], Settings],
        command: str,
    ) -> None:
        self.out = Path(out)
        self.settings = settings
        self.command = command
        self.timings: dict[str, float] = {}
        self.profile = Profile()
        self._logs: list[storage.JsonlLog] = []
        with distributed.main_first():  # one process writes config.json, the others check it
            self._check(load)

    def _check(self, load: Callable[[dict[str, Any]], Settings]) -> None:
        """Write the settings (and the command) on the first start; refuse other settings
        on a resume (settings added after the run began take their defaults)."""
        path = self.out / storage.RUN_CONFIG
        wanted = self.settings.to_dict()
        if not path.is_file():
            storage.write_json(path, {"command": self.command, **wanted})
            return
        data = storage.read_json(path, f"the settings of a `{self.command}` run")
        written = data.pop("command", self.command) if isinstance(data, dict) else None
        if written != self.command:
            raise ValueError(f"{self.out} holds a `{written}` run, not a `{self.command}` run")
        before = load(data).to_dict()
        if before != wanted:
            changed = sorted(k for k in wanted if before.get(k) != wanted[k])
            raise ValueError(
                f"{self.out} holds a run with other settings ({', '.join(changed)}); "
                "use another --out or the same settings to resume it"
            )

    def log(
        self,
        name: str,
        key: Callable[[dict[str, Any]], Any],
        upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> storage.JsonlLog:
        """The run's log ``name`` (a JSON-lines file in the folder), keyed by ``key``."""
        return self.track(storage.JsonlLog(self.out / name, key, upgrade=upgrade))[0]

    def track(self, *logs: storage.JsonlLog) -> tuple[storage.JsonlLog, ...]:
        """Logs opened elsewhere that :meth:`sync` and :meth:`finish` keep up to date."""
        self._logs.extend(logs)
        return logs

    def sync(self) -> None:
        """With several processes: wait for all, then read every log again, so each holds
        the records the others appended (nothing with one process)."""
        if distributed.world_size() > 1:
            distributed.barrier()
            for log in self._logs:
                log.refresh()

    def finish(self) -> None:
        """The end of a run: :meth:`sync`, then the main process folds the logs' parts into
        the logs and writes every process's phase times (the slowest of each phase)."""
        self.sync()
        gathered = distributed.gather_json(self.timings)
        if distributed.is_main():
            for log in self._logs:
                log.merge_parts()
            if distributed.world_size() > 1:
                for timings in gathered:
                    for name, seconds in timings.items():
                        self.timings[name] = max(seconds, self.timings.get(name, 0.0))
                self._write_timings()

    @contextmanager
    def phase(self, name: str, *, sync: bool = False) -> Iterator[None]:
        """Time a phase of this session's run into ``timings.json`` (seconds as run now:
        a resumed run times only what it still had to do; a phase run several times,
        once per split seed, sums its times), with the profile of the sections run inside
        it (:mod:`fasb_lens.profiling`). With ``sync`` a phase every process runs ends
        with :meth:`sync`, so the next one sees all its records."""
        start, before = time.perf_counter(), self.timings.get(name, 0.0)
        try:
            with profiling(self.profile), self.profile.section(name):
                yield
            if sync:
                self.sync()
        finally:
            self.timings[name] = round(before + time.perf_counter() - start, 1)
            if distributed.is_main():
                self._write_timings()

    def _write_timings(self) -> None:
        storage.write_json(
            self.out / storage.TIMINGS, {"phases": self.timings, "profile": self.profile.to_dict()}
        )


def pending_chunks(
    items: Sequence[T], size: int, missing: Callable[[T], Collection[str]]
) -> Iterator[tuple[list[T], list[set[str]]]]:
    """The chunks of ``items`` (``size`` each) with anything ``missing``, each with what
    is missing per item; chunks with nothing missing are skipped. The caller computes a
    yielded chunk whole and records only what was missing."""
    for start in range(0, len(items), max(1, size)):
        chunk = list(items[start : start + size])
        wanted = [set(missing(item)) for item in chunk]
        if any(wanted):
            yield chunk, wanted


def upgrade_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record an earlier version wrote (its policy under ``method``) in this version's
    form (``policy``); for :class:`~fasb_lens.storage.JsonlLog`'s ``upgrade``."""
    if "method" in record and "policy" not in record:
        record = {("policy" if key == "method" else key): value for key, value in record.items()}
    return record


def run_command(folder: str | Path) -> str | None:
    """The command whose run folder ``folder`` is (from its ``config.json``), if any."""
    path = Path(folder) / storage.RUN_CONFIG
    if not path.is_file():
        return None
    data = storage.read_json(path, "the settings of a run")
    return data.get("command") if isinstance(data, dict) else None
