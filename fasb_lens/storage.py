"""Saving and loading: artifact files, atomic writes and the append-only run log.

Everything fasb_lens writes goes through this module, so every format lives in one place:

* an **artifact** is ``NAME.safetensors`` (tensors) + ``NAME.json`` (metadata with a
  ``format_version`` and the library versions); loading one never runs code, and a
  damaged or incomplete artifact raises :class:`ArtifactError` naming the file and
  what is wrong;
* every other file is written **atomically**: to ``FILE.partial`` first, then renamed,
  so a killed process never leaves a half-written file that looks finished;
* a run's results go to a :class:`JsonlLog`, one whole JSON line per record, flushed as
  it comes; a line torn by a killed process is dropped when the log is read again.

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
ACTIVATIONS_DIR = "activations"
FOLDS_DIR = "folds"
MC_DATASETS_LOG = "mc_datasets.jsonl"
MC_DATASETS_SUMMARY = "mc_datasets.json"
MC_DATASETS_TABLE = "mc_datasets"
"""A table's stem: ``mc_datasets.md`` and ``mc_datasets.csv``."""
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
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
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
    dropped and cut from the file, while a malformed line elsewhere is damage and
    raises :class:`ArtifactError`. ``upgrade`` turns a record an earlier version wrote
    into this version's form as it is read.
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
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        raw = self.path.read_bytes()
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
                            "%s: dropping a torn last line left by an interrupted run", self.path
                        )
                        break
                    raise ArtifactError(
                        f"{self.path}, line {index + 1}: not a JSON record ({error}); "
                        "the log is damaged"
                    ) from error
                if not isinstance(record, dict):
                    raise ArtifactError(f"{self.path}, line {index + 1}: expected a JSON object")
                if self.upgrade is not None:
                    record = self.upgrade(record)
                self.records[self.key(record)] = record
            kept += len(line) + 1
        if kept != len(raw):  # cut a torn line, or end the last whole line with its newline
            with self.path.open("r+b") as handle:
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.records[self.key(record)] = record

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.append(record)

    def values(self) -> list[dict[str, Any]]:
        return list(self.records.values())
