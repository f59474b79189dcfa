"""Several processes sharing a run (``torchrun``, gloo on the CPU): the same records and
tables as one process, and a run killed with one count of processes resumed with the
other. The unit tests at the top need no second process.

Each command runs as a subprocess (``tests/distributed_cli.py``, which shortens the
calibration searches as the ``small_searches`` fixture does), one thread per process
(as ``torchrun`` sets it), with ``GLOO_SOCKET_IFNAME=lo``, which gloo needs to be
reliable on one machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasb_lens import cli, distributed, storage
from fasb_lens.activations.collect import _held_shards, _pending_pieces

HERE = Path(__file__).resolve().parent
ENTRY = HERE / "distributed_cli.py"
GRIDS = {"fixed": [1.0, 4.0], "fasb": [1.0, 4.0]}


# --------------------------------------------------------------------------- one process


def test_one_process_is_the_identity() -> None:
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.share(range(5)) == [0, 1, 2, 3, 4]
    assert distributed.gather_json({"a": 1}) == [{"a": 1}]
    assert distributed.share_map([1, 2, 3], lambda x: x * 10, decode=None) == [10, 20, 30]
    with distributed.split(4) as (group, groups):
        assert (group, groups, distributed.world_size()) == (0, 1, 1)
    with distributed.main_first():
        distributed.barrier()
    assert distributed.describe() == "" and distributed.reports_error()


def test_gpus_for_each_process() -> None:
    gpus = [str(i) for i in range(8)]
    assert distributed.gpus_for_rank(1, 8, 1, gpus) == ["1"]
    assert distributed.gpus_for_rank(1, 4, 2, gpus) == ["2", "3"]
    assert distributed.gpus_for_rank(3, 4, 2, ["4", "5", "6", "7", "0", "1", "2", "3"]) == [
        "2",
        "3",
    ]
    assert distributed.gpus_for_rank(3, 4, 1, ["0", "1"]) == ["1"]  # shared, round-robin
    with pytest.raises(ValueError, match="2 processes with --n-devices 2 need 4 GPUs"):
        distributed.gpus_for_rank(0, 2, 2, ["0", "1"])


def test_a_log_in_parts_reads_merged(tmp_path, monkeypatch) -> None:
    path = tmp_path / "records.jsonl"
    main = storage.JsonlLog(path, lambda r: r["id"])
    main.append({"id": 1, "v": "a"})
    monkeypatch.setattr(distributed, "global_rank", lambda: 2)
    other = storage.JsonlLog(path, lambda r: r["id"])
    assert other.writes_to == tmp_path / "records.rank2.jsonl"
    other.append({"id": 2, "v": "b"})
    other.append({"id": 1, "v": "a"})  # the same unit again, the same record
    # a torn line in another process's part is skipped, never cut by a reader
    with other.writes_to.open("a") as handle:
        handle.write('{"id": 3, "v"')
    monkeypatch.setattr(distributed, "global_rank", lambda: 0)
    main.refresh()
    assert {r["id"] for r in main.values()} == {1, 2}
    assert other.writes_to.read_text().endswith('{"id": 3, "v"')
    main.merge_parts()
    assert not other.writes_to.exists()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, 2]
    assert len(storage.JsonlLog(path, lambda r: r["id"])) == 2


def test_activation_pieces_follow_the_batches() -> None:
    # one process: each chunk's missing rows whole, as before
    assert _pending_pieces(100, [], 64, 16, 1) == [(0, 64), (64, 100)]
    assert _pending_pieces(100, [(0, 64, "s")], 64, 16, 1) == [(64, 100)]
    # two processes: each chunk cut in two at a multiple of the batch size
    assert _pending_pieces(100, [], 64, 16, 2) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    # a second process's shard left by a killed run: the rest of its chunk, batch-aligned
    assert _pending_pieces(100, [(32, 64, "s")], 64, 16, 1) == [(0, 32), (64, 100)]
    assert _pending_pieces(40, [], 64, 16, 4) == [(0, 16), (16, 32), (32, 40)]


def test_shards_written_before_a_kill_are_found(tmp_path) -> None:
    names = [storage.ACTIVATIONS_SHARD.format(start=a, stop=b) for a, b in ((0, 32), (32, 64))]
    manifest = {"fingerprint": "f", "n": 100, "shards": names[:1], "complete": False}
    manifest |= {"prompts": [], "groups": None, "has_labels": False}
    storage.write_json(tmp_path / storage.ACTIVATIONS_MANIFEST, manifest)  # lists the first
    for start, stop in ((0, 32), (32, 64), (16, 48), (90, 200)):
        name = storage.ACTIVATIONS_SHARD.format(start=start, stop=stop)
        storage.save_tensors(tmp_path / name, {"z": torch.zeros(1)})
    held = _held_shards(tmp_path, manifest)
    # the second was written after the manifest; 16-48 overlaps them, 90-200 is too long
    assert [(start, stop) for start, stop, _ in held] == [(0, 32), (32, 64)]
    with pytest.raises(ValueError, match="other prompts"):
        _held_shards(tmp_path, {**manifest, "fingerprint": "g"})


def test_torchrun_is_for_the_commands_that_share(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["generate", "--artifact", "x", "--question", "Why?"]) == 2
    assert "`generate` runs in one process; torchrun is for reproduce" in capsys.readouterr().err


# --------------------------------------------------------------------------- processes


def fasb_lens(*args: str, processes: int = 1, kill: str | None = None) -> int:
    """Run ``fasb-lens ARGS`` in ``processes`` processes (torchrun when more than one);
    ``kill="RANK:COUNT"`` kills that process after its COUNT-th record. The exit status."""
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "FASB_LENS_TEST_GRIDS": json.dumps(GRIDS),
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("FASB_LENS_TEST_KILL", None)
    if kill:
        env["FASB_LENS_TEST_KILL"] = kill
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc-per-node", str(processes)]
    done = subprocess.run(
        [*launcher, str(ENTRY), *args, "--no-progress"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0 and kill is None:
        raise AssertionError(f"fasb-lens {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.returncode


def without_timings(record: dict) -> dict:
    """A record but its wall-clock timings (which no two runs share)."""
    record = json.loads(json.dumps(record))
    trace = record.get("trace")
    if isinstance(trace, dict):
        trace.pop("timings", None)
    return record


def keyed(path: Path, *names: str) -> dict:
    """A log's records by key (every part merged), timings left out."""
    log = storage.JsonlLog(path, lambda r: tuple(str(r.get(name)) for name in names))
    return {key: without_timings(record) for key, record in log.records.items()}


def close(a, b) -> bool:
    """``a == b``, numbers to 1e-12."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-12) or (a != a and b != b)
    return a == b


def assert_same_run(first: Path, second: Path, logs: dict[str, tuple[str, ...]], files) -> None:
    """The same records by key, the same files byte for byte; ``answers.csv`` as the same
    rows and ``results.json`` to 1e-12 (their records' order, hence the order of their sums,
    depends on who wrote what)."""
    for name, key in logs.items():
        assert keyed(first / name, *key) == keyed(second / name, *key), name
    for name in files:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        if name == "answers.csv":
            a, b = sorted(a.splitlines()), sorted(b.splitlines())
        if name == "results.json":
            assert close(json.loads(a), json.loads(b)), name
        else:
            assert a == b, name
    assert not list(second.glob("*.rank*.jsonl"))  # the parts were merged into the logs


REPRODUCE = [
    "reproduce",
    "--truthfulqa",
    "mini",
    "--questions",
    "8",
    "--policies",
    "none,fixed,fasb",
    "--judges",
    "bleu-acc,info-check",
    "--top-k",
    "4",
    "--top-k-candidates",
    "2",
    "4",
    "--alpha",
    "4",
    "--backtrack-tokens",
    "2",
    "--max-new-tokens",
    "6",
    "--mc-source",
    "csv",
    "--batch-size",
    "3",
]
REPRODUCE_LOGS = {
    "records.jsonl": ("seed", "fold", "question_id", "task", "policy"),
    "judgements.jsonl": ("seed", "fold", "question_id", "policy", "judge"),
}
REPRODUCE_FILES = (
    "table.md",
    "results.json",
    "answers.csv",
    "folds/seed42/fold0/calibration.json",
    "folds/seed42/fold1/calibration.json",
)


@pytest.fixture(scope="module")
def one_process_run(tiny_llama_folder, tmp_path_factory) -> tuple[Path, list[str]]:
    args = [*REPRODUCE, "--model", str(tiny_llama_folder)]
    out = tmp_path_factory.mktemp("one")
    fasb_lens(*args, "--out", str(out))
    return out, args


@pytest.mark.parametrize("processes", [2, 3])
def test_reproduce_in_several_processes_equals_one(one_process_run, tmp_path, processes) -> None:
    """Two processes calibrate a fold each; three put two on fold 0, sharing its
    validation answers' generation (the groups of ``distributed.split``)."""
    one, args = one_process_run
    fasb_lens(*args, "--out", str(tmp_path), processes=processes)
    assert_same_run(one, tmp_path, REPRODUCE_LOGS, REPRODUCE_FILES)
    assert set(json.loads((tmp_path / "timings.json").read_text())["phases"]) >= {
        "anchoring and calibration",
        "generation",
    }


@pytest.mark.parametrize(("killed", "resumed", "kill"), [(2, 1, "1:6"), (1, 2, "0:20")])
def test_reproduce_killed_resumes_with_the_other_count(
    one_process_run, tmp_path, killed: int, resumed: int, kill: str
) -> None:
    one, args = one_process_run
    assert fasb_lens(*args, "--out", str(tmp_path), processes=killed, kill=kill) != 0
    assert not (tmp_path / "table.md").exists()
    fasb_lens(*args, "--out", str(tmp_path), processes=resumed)
    assert_same_run(one, tmp_path, REPRODUCE_LOGS, REPRODUCE_FILES)


@pytest.fixture(scope="module")
def artifact(tiny_llama_folder, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artifact")
    model = ["--model", str(tiny_llama_folder), "--no-progress"]
    assert cli.main(["collect", *model, "--limit", "12", "--out", str(root / "acts")]) == 0
    fit = ["fit", "--activations", str(root / "acts"), "--out", str(root / "artifact")]
    assert cli.main([*fit, "--top-k", "3", "--no-progress"]) == 0
    return root / "artifact"


ABLATE_LOGS = {"ablation.jsonl": ("estimator", "metric", "kind", "head")}
ABLATE_FILES = ("ablation_exact_logprob_margin_zero.safetensors",)


def test_ablate_in_two_processes_and_resumed(artifact, tiny_llama_folder, tmp_path) -> None:
    args = ["ablate", "--artifact", str(artifact), "--questions", "3", "--no-png"]
    args += ["--model", str(tiny_llama_folder)]
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    fasb_lens(*args, "--out", str(one))
    fasb_lens(*args, "--out", str(two), processes=2)
    assert_same_run(one, two, ABLATE_LOGS, ABLATE_FILES)
    # the second process dies after its first layer's 4 heads and 1 more: resumed alone
    assert fasb_lens(*args, "--out", str(resumed), processes=2, kill="1:6") != 0
    fasb_lens(*args, "--out", str(resumed))
    assert_same_run(one, resumed, ABLATE_LOGS, ABLATE_FILES)


MC_LOGS = {"mc_datasets.jsonl": ("dataset", "item_id", "policy")}
MC_FILES = ("mc_datasets.md", "mc_datasets.json", "calibration/copa.json")


def test_mc_datasets_in_several_processes_and_resumed(data_dir, tiny_llama_folder, tmp_path):
    """Two processes take a dataset each; three put two on COPA, sharing its test items."""
    args = ["mc-datasets", "--data", str(data_dir), "--datasets", "copa", "sst2"]
    args += ["--limit", "24", "--policies", "none,fasb", "--top-k", "2"]
    args += ["--model", str(tiny_llama_folder)]
    one, resumed = tmp_path / "one", tmp_path / "resumed"
    fasb_lens(*args, "--out", str(one))
    for processes in (2, 3):
        fasb_lens(*args, "--out", str(tmp_path / str(processes)), processes=processes)
        assert_same_run(one, tmp_path / str(processes), MC_LOGS, MC_FILES)
    # one process killed in its second dataset (24 records each), resumed by two
    assert fasb_lens(*args, "--out", str(resumed), kill="0:30") != 0
    fasb_lens(*args, "--out", str(resumed), processes=2)
    assert_same_run(one, resumed, MC_LOGS, MC_FILES)
