"""Saving and loading: atomic writes, artifacts that explain what is wrong, the run log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fasb_lens import storage
from fasb_lens.storage import ArtifactError, JsonlLog


def test_atomic_writes_leave_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.json"
    storage.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    def fail(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        storage.write_atomic(target, fail)
    assert json.loads(target.read_text()) == {"a": 1}  # the old file is whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]


def test_artifact_round_trip_records_versions(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    storage.save_artifact(tmp_path, "thing", tensors, {"kind": "demo"})
    assert storage.has_artifact(tmp_path, "thing")
    loaded, meta = storage.load_artifact(tmp_path, "thing", tensors=("w",), meta=("kind",))
    assert torch.equal(loaded["w"], tensors["w"])
    assert meta["format_version"] == storage.FORMAT_VERSION and "torch" in meta["versions"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "thing.json").unlink(),
            "the thing artifact is incomplete, thing.json is missing",
        ),
        (lambda d: (d / "thing.json").write_text("{not json"), r"thing.json is not valid JSON"),
        (lambda d: (d / "thing.json").write_text("[1, 2]"), "holds a list, expected a JSON object"),
        (
            lambda d: (d / "thing.json").write_text('{"format_version": 99, "kind": 1}'),
            "format_version 99 is not supported",
        ),
        (
            lambda d: (d / "thing.json").write_text('{"format_version": 1}'),
            "thing.json is incomplete: key 'kind' is missing",
        ),
        (
            lambda d: (d / "thing.safetensors").write_bytes(b"\xff" * 64),
            "thing.safetensors is damaged and cannot be read",
        ),
    ],
)
def test_damaged_artifacts_say_what_is_wrong(tmp_path: Path, damage, message: str) -> None:
    storage.save_artifact(tmp_path, "thing", {"w": torch.ones(2)}, {"kind": "demo"})
    damage(tmp_path)
    with pytest.raises(ArtifactError, match=message):
        storage.load_artifact(tmp_path, "thing", tensors=("w",), meta=("kind",))


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    storage.save_artifact(tmp_path, "thing", {"w": torch.ones(2)}, {})
    with pytest.raises(ArtifactError, match="incomplete: tensor 'bias' is missing"):
        storage.load_artifact(tmp_path, "thing", tensors=("w", "bias"))


def test_log_drops_a_torn_last_line_and_refuses_damage(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path, key=lambda record: record["k"])
    log.append({"k": 1, "v": "a"})
    log.append({"k": 2, "v": "b"})
    log.append({"k": 1, "v": "c"})  # the latest record of a key wins
    assert [r["v"] for r in JsonlLog(path, key=lambda r: r["k"]).values()] == ["c", "b"]
    with path.open("a") as handle:
        handle.write('{"k": 3, "v"')  # killed mid-write
    reread = JsonlLog(path, key=lambda r: r["k"])
    assert len(reread) == 2 and path.read_text().endswith('"b"}\n{"k": 1, "v": "c"}\n')
    reread.append({"k": 3, "v": "d"})
    assert len(JsonlLog(path, key=lambda r: r["k"])) == 3
    with path.open("a") as handle:
        handle.write('{"k": 4}')  # whole, but its newline never made it
    assert len(JsonlLog(path, key=lambda r: r["k"])) == 4 and path.read_text().endswith("}\n")
    path.write_text('{"k": 1}\nnot json\n{"k": 2}\n')
    with pytest.raises(ArtifactError, match="line 2: not a JSON record"):
        JsonlLog(path, key=lambda r: r["k"])
