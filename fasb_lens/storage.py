"""Saving and loading: artifact files, atomic writes and the append-only run log.

Everything fasb_lens writes goes through this module, so every format lives in one place:

* an **artifact** is ``NAME.safetensors`` (tensors) + ``NAME.json`` (metadata with a
  ``format_version`` and the library versions); loading one never runs code, and a
  damaged or incomplete artifact raises :class:`ArtifactError` naming the file and
  what is wrong;
* every other file is written **atomically**: to ``FILE.partial`` first, then renamed,
  so a killed process never leaves a half-written file that looks finished;
* a run's results go to a :class:`JsonlLog`, one whole JSON line per record, flushed as
  it comes; a line torn by a killed process is dropped when the log is read again. When
  several processes share a run (:mod:`fasb_lens.distributed`), each appends to its own
  part of the log (``NAME.rank1.jsonl`` beside ``NAME.jsonl``) and reading merges them.

The file names of every artifact and run file are defined here once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from torch import Tensor

from fasb_lens import distributed

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of an artifact format unless its writer gives another (``version=``); loading
refuses a version its reader does not accept."""

# artifact names (``NAME.safetensors`` + ``NAME.json``)
STEERING = "steering"
PROBES = "probes"
CAA = "caa"
ABLATION = "ablation"
# head activations: a manifest and numbered shards
ACTIVATIONS_MANIFEST = "head_activations.json"
ACTIVATIONS_SHARD = "head_activations-{start:08d}-{stop:08d}.safetensors"
# files of a run directory
RUN_CONFIG = "config.json"
RECORDS = "records.jsonl"
JUDGEMENTS = "judgements.jsonl"
CALIBRATION = "calibration.json"
TIMINGS = "timings.json"
QUESTIONS = "questions.json"
RESULTS = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_TABLE = "table.md"
COMPARISONS_TABLE = "comparisons"
"""The paired comparisons of a run: ``comparisons.md`` and ``comparisons.csv``."""
ANSWERS_CSV = "answers.csv"
PER_QUESTION_CSV = "per_question.csv"
"""Every record of a run as one row with its judges' verdicts (see
:mod:`fasb_lens.evaluation.per_question`)."""
ACTIVATIONS_DIR = "activations"
FOLDS_DIR = "folds"
MC_DATASETS_LOG = "mc_datasets.jsonl"
MC_DATASETS_SUMMARY = "mc_datasets.json"
MC_DATASETS_TABLE = "mc_datasets"
"""A table's stem: ``mc_datasets.md`` and ``mc_datasets.csv``."""
MC_DATASETS_COMPARISONS = "mc_datasets_comparisons"
"""The paired comparisons of an ``mc-datasets`` run: ``.md`` and ``.csv``."""
MC_CALIBRATION_DIR = "calibration"
ABLATION_LOG = "ablation.jsonl"
TRAIN_FRACTION_TABLE = "train_fraction"

PARTIAL_SUFFIX = ".partial"


class ArtifactError(ValueError):
    """A saved file is missing, damaged, incomplete or of another format version."""


def library_versions() -> dict[str, str]:
    """Versions recorded in every artifact's JSON."""
    versions = {}
    for name in ("fasb-lens", "torch", "transformers", "transformer-lens"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --------------------------------------------------------------------------- atomic writes


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on ``PATH.partial``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # processes sharing a run never write through one partial file
    own = f".rank{distributed.global_rank()}" if distributed.global_rank() else ""
    partial = path.with_name(path.name + own + PARTIAL_SUFFIX)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


@contextmanager
def staged(folder: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``folder`` whose files move into ``folder`` when the block
    ends without an error; after an error nothing of it remains.

    Several files written this way appear together (each by an atomic rename), so a
    command that fails half-way leaves no part of an artifact behind.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(
        tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=PARTIAL_SUFFIX, dir=folder.parent)
    )
    try:
        yield stage
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(stage.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return write_atomic(path, lambda target: target.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON atomically."""
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False))


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed one raises :class:`ArtifactError`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: expected {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); expected {what}") from error


def save_tensors(path: str | Path, tensors: dict[str, Tensor]) -> Path:
    """Write tensors as one safetensors file, atomically."""
    from safetensors.torch import save_file

    contiguous = {key: value.contiguous() for key, value in tensors.items()}
    return write_atomic(path, lambda target: save_file(contiguous, str(target)))


def load_tensors(path: str | Path, *, required: Sequence[str] = ()) -> dict[str, Tensor]:
    """Read a safetensors file; a damaged one or a missing tensor raises :class:`ArtifactError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{path} is damaged and cannot be read: {error}") from error
    missing = [key for key in required if key not in tensors]
    if missing:
        raise ArtifactError(f"{path} is incomplete: tensor {missing[0]!r} is missing")
    return tensors


# --------------------------------------------------------------------------- artifacts


def artifact_paths(folder: str | Path, name: str) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` inside ``folder``."""
    folder = Path(folder)
    return folder / f"{name}.safetensors", folder / f"{name}.json"


def has_artifact(folder: str | Path, name: str) -> bool:
    """Whether ``folder`` holds both files of the artifact ``name``."""
    return all(path.is_file() for path in artifact_paths(folder, name))


def save_artifact(
    folder: str | Path,
    name: str,
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    *,
    version: int = FORMAT_VERSION,
) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` into ``folder``, each atomically.

    ``format_version`` (``version``) and the library ``versions`` are added to ``meta``.
    """
    tensor_path, meta_path = artifact_paths(folder, name)
    save_tensors(tensor_path, tensors)
    write_json(meta_path, {"format_version": version, **meta, "versions": library_versions()})
    return Path(folder)


def load_artifact(
    folder: str | Path,
    name: str,
    *,
    tensors: Sequence[str] = (),
    meta: Sequence[str] = (),
    versions: Sequence[int] = (FORMAT_VERSION,),
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read the artifact ``name`` from ``folder`` (no code runs while loading).

    ``tensors`` and ``meta`` name the keys that must be present and ``versions`` the
    format versions the caller reads; a missing file or key, a damaged file or another
    format version raises :class:`ArtifactError`.
    """
    tensor_path, meta_path = artifact_paths(folder, name)
    missing = [path.name for path in (tensor_path, meta_path) if not path.is_file()]
    if len(missing) == 2:
        raise ArtifactError(
            f"{folder} holds no {name} artifact ({' and '.join(missing)} are missing)"
        )
    if missing:
        raise ArtifactError(f"{folder}: the {name} artifact is incomplete, {missing[0]} is missing")
    data = read_json(meta_path, f"the metadata of a {name} artifact")
    if not isinstance(data, dict):
        raise ArtifactError(f"{meta_path} holds a {type(data).__name__}, expected a JSON object")
    if data.get("format_version") not in versions:
        expected = " or ".join(map(str, versions))
        raise ArtifactError(
            f"{meta_path}: format_version {data.get('format_version')!r} is not supported "
            f"(expected {expected})"
        )
    missing = [key for key in meta if key not in data]
    if missing:
        raise ArtifactError(f"{meta_path} is incomplete: key {missing[0]!r} is missing")
    return load_tensors(tensor_path, required=tensors), data


# --------------------------------------------------------------------------- the run log


class JsonlLog:
    """An append-only JSON-lines file that survives being killed mid-run.

    Each record is written as one whole line, then flushed and synced. Reading keeps the
    last record of each ``key``; a torn last line (a process killed while writing it) is
    dropped (and cut from the file if this process appends to it), while a malformed line
    elsewhere is damage and raises :class:`ArtifactError`. ``upgrade`` turns a record an
    earlier version wrote into this version's form as it is read.

    Several processes sharing a run (:mod:`fasb_lens.distributed`) each append to their own
    part: process ``r > 0`` to ``NAME.rank{r}.jsonl`` beside ``NAME.jsonl``. Reading merges
    the file and every part by key, whichever number of processes wrote them, so a run
    resumes with any number; :meth:`refresh` reads the others' records again (after a
    barrier) and :meth:`merge_parts` folds the parts into the file at the end of a run.
    """

    def __init__(
        self,
        path: str | Path,
        key: Callable[[dict[str, Any]], Any],
        upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.key = key
        self.upgrade = upgrade
        self.records: dict[Any, dict[str, Any]] = {}
        self.writes_to = part_path(self.path, distributed.global_rank())
        self._read_all()

    def parts(self) -> list[Path]:
        """The part files other processes wrote (``NAME.rank{r}.jsonl``), by rank."""
        found = []
        for path in self.path.parent.glob(f"{self.path.stem}.rank*{self.path.suffix}"):
            number = path.name[len(self.path.stem) + 5 : len(path.name) - len(self.path.suffix)]
            if number.isdigit() and int(number) > 0:
                found.append((int(number), path))
        return [path for _, path in sorted(found)]

    def _read_all(self) -> None:
        for path in (self.path, *self.parts()):
            if path.is_file():
                self._read(path)

    def refresh(self) -> None:
        """Read every part again (records other processes appended since); call it only
        when no process is writing, e.g. right after :func:`fasb_lens.distributed.barrier`."""
        self.records = {}
        self._read_all()

    def merge_parts(self) -> None:
        """Fold the part files into the log's own file (rewritten atomically, every record
        once) and remove them; nothing to do when there are none. Only one process may call
        this, after the others stopped writing."""
        parts = self.parts()
        if not parts:
            return
        self.refresh()
        write_text(
            self.path,
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records.values()),
        )
        for path in parts:
            path.unlink()

    def _read(self, path: Path) -> None:
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        kept = 0  # bytes of whole, valid lines
        for index, line in enumerate(lines[: last + 1]):
            if line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    if index == last:
                        logger.warning(
                            "%s: dropping a torn last line left by an interrupted run", path
                        )
                        break
                    raise ArtifactError(
                        f"{path}, line {index + 1}: not a JSON record ({error}); the log is damaged"
                    ) from error
                if not isinstance(record, dict):
                    raise ArtifactError(f"{path}, line {index + 1}: expected a JSON object")
                if self.upgrade is not None:
                    record = self.upgrade(record)
                self.records[self.key(record)] = record
            kept += len(line) + 1
        # cut a torn line, or end the last whole line with its newline: only in this
        # process's own part, which no other process writes to
        if kept != len(raw) and path == self.writes_to:
            with path.open("r+b") as handle:
                handle.truncate(min(kept, len(raw)))
                if kept > len(raw):
                    handle.seek(0, os.SEEK_END)
                    handle.write(b"\n")

    def __contains__(self, key: Any) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: Any) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self.writes_to.parent.mkdir(parents=True, exist_ok=True)
        with self.writes_to.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.records[self.key(record)] = record

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.append(record)

    def values(self) -> list[dict[str, Any]]:
        return list(self.records.values())


def part_path(path: str | Path, rank: int) -> Path:
    """The part of the log ``path`` that process ``rank`` appends to: ``path`` itself for
    rank 0, ``NAME.rank{rank}.jsonl`` beside it for the others."""
    path = Path(path)
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
