"""Bad input on the command line: one line naming the culprit, status 2, no traceback.

Each case is something users get wrong - a file, a folder, an option's value, an artifact,
a run folder, a model - given to the command they would give it to.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fasb_lens import cli

CSV_HEADER = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
GOOD_ROW = "Adversarial,Misc,Is the sky blue?,Yes,Yes; It is blue,No; It is green,x\n"


@pytest.fixture(scope="module")
def world(tiny_llama_folder: Path, tiny_gpt2_folder: Path, tmp_path_factory) -> dict[str, Path]:
    """A collected and fitted tiny model, and a folder for each kind of bad file."""
    root = tmp_path_factory.mktemp("world")
    quiet = ["--no-progress", "--json"]
    model = ["--model", str(tiny_llama_folder)]
    acts, artifact = root / "acts", root / "artifact"
    assert (
        cli.main(
            ["collect", *model, "--limit", "12", "--out", str(acts), "--caa-layer", "-1", *quiet]
        )
        == 0
    )
    assert (
        cli.main(
            ["fit", "--activations", str(acts), "--out", str(artifact), "--top-k", "3", *quiet]
        )
        == 0
    )
    (root / "a_file.txt").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "empty_questions.txt").write_text("\n  \n")
    (root / "bad_question.csv").write_text(
        CSV_HEADER + GOOD_ROW + "Adversarial,Misc,,Yes,Yes,No,x\n"
    )
    data = root / "tqa"
    data.mkdir()
    (data / "TruthfulQA.csv").write_text(CSV_HEADER + GOOD_ROW)
    (data / "mc_task.json").write_text("{not json")
    return {
        "root": root,
        "acts": acts,
        "artifact": artifact,
        "tiny": tiny_llama_folder,
        "gpt2": tiny_gpt2_folder,
        "data": data,
    }


def damaged_copy(world: dict[str, Path], name: str, change: Callable[[Path], None]) -> Path:
    folder = world["root"] / name
    if not folder.exists():
        folder.mkdir()
        for path in world["artifact"].iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        change(folder)
    return folder


def drop_key(key: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        meta = json.loads((folder / "steering.json").read_text())
        del meta[key]
        (folder / "steering.json").write_text(json.dumps(meta))

    return change


def set_version(folder: Path) -> None:
    meta = json.loads((folder / "steering.json").read_text())
    meta["format_version"] = 7
    (folder / "steering.json").write_text(json.dumps(meta))


def truncate_tensors(folder: Path) -> None:
    path = folder / "steering.safetensors"
    path.write_bytes(path.read_bytes()[:40])


def gen(w: dict[str, Path], *extra: str) -> list[str]:
    return ["generate", "--artifact", str(w["artifact"]), "--max-new-tokens", "2", *extra]


# (id, arguments built from the world, what the one line must contain)
CASES: list[tuple[str, Callable[[dict[str, Path]], list[str]], str]] = [
    # reproduce
    (
        "reproduce: missing data",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            str(w["root"] / "nope"),
            "--out",
            str(w["root"] / "r1"),
        ],
        "nope",
    ),
    (
        "reproduce: empty question",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            str(w["root"] / "bad_question.csv"),
            "--out",
            str(w["root"] / "r2"),
        ],
        "row 2: field 'Question' is empty",
    ),
    (
        "reproduce: threshold below 0",
        lambda w: ["reproduce", "--truthfulqa", "mini", "--out", "o", "--threshold", "-0.2"],
        "argument --threshold: must be >= 0 and <= 1, got -0.2",
    ),
    (
        "reproduce: one fold",
        lambda w: ["reproduce", "--truthfulqa", "mini", "--out", "o", "--folds", "1"],
        "argument --n-folds/--folds: must be >= 2, got 1",
    ),
    (
        "reproduce: no questions",
        lambda w: ["reproduce", "--truthfulqa", "mini", "--out", "o", "--questions", "0"],
        "argument --questions: must be >= 1, got 0",
    ),
    (
        "reproduce: top-k 0",
        lambda w: ["reproduce", "--truthfulqa", "mini", "--out", "o", "--top-k", "0"],
        "argument --top-k: must be >= 1, got 0",
    ),
    (
        "reproduce: unknown policy",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            "mini",
            "--out",
            str(w["root"] / "r3"),
            "--methods",
            "fasb,magic",
        ],
        "unknown policy 'magic'",
    ),
    (
        "reproduce: unknown judge",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            "mini",
            "--out",
            str(w["root"] / "r4"),
            "--judges",
            "gpt-judge",
        ],
        "unknown judge 'gpt-judge'",
    ),
    (
        "reproduce: unknown task",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            "mini",
            "--out",
            str(w["root"] / "r5"),
            "--metrics",
            "essays",
        ],
        "unknown task 'essays'",
    ),
    (
        "reproduce: out is a file",
        lambda w: ["reproduce", "--truthfulqa", "mini", "--out", str(w["root"] / "a_file.txt")],
        "a_file.txt is a file",
    ),
    (
        "reproduce: out holds an artifact",
        lambda w: ["reproduce", "--truthfulqa", "mini", "--out", str(w["artifact"])],
        "holds the output of `fit`, not of `reproduce`",
    ),
    (
        "reproduce: missing primer",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            "mini",
            "--out",
            str(w["root"] / "r6"),
            "--primer",
            str(w["root"] / "primer.txt"),
        ],
        "primer.txt does not exist",
    ),
    (
        "reproduce: train fraction 0",
        lambda w: ["reproduce", "--truthfulqa", "mini", "--out", "o", "--train-fraction", "0"],
        "argument --train-fraction: must be > 0 and <= 1, got 0",
    ),
    (
        "reproduce: batch size not a number",
        lambda w: ["reproduce", "--truthfulqa", "mini", "--out", "o", "--batch-size", "abc"],
        "argument --batch-size: expected an integer, got 'abc'",
    ),
    (
        "reproduce: malformed mc_task.json",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            str(w["data"] / "TruthfulQA.csv"),
            "--out",
            str(w["root"] / "r7"),
        ],
        "mc_task.json",
    ),
    (
        "reproduce: top-k above the model's heads",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            "mini",
            "--model",
            str(w["tiny"]),
            "--out",
            str(w["root"] / "r8"),
            "--mc-source",
            "csv",
            "--top-k",
            "999",
        ],
        "top_k 999 is more than the model's 16 heads",
    ),
    (
        "reproduce: model folder missing",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            "mini",
            "--model",
            str(w["root"] / "no_model"),
            "--mc-source",
            "csv",
            "--out",
            str(w["root"] / "r9"),
        ],
        "no_model does not exist",
    ),
    (
        "reproduce: hub model not cached",
        lambda w: [
            "reproduce",
            "--truthfulqa",
            "mini",
            "--model",
            "nobody/no-such-model",
            "--mc-source",
            "csv",
            "--out",
            str(w["root"] / "r10"),
        ],
        "'nobody/no-such-model' is not in the local HuggingFace cache",
    ),
    # generate
    (
        "generate: empty question",
        lambda w: gen(w, "--question", ""),
        "argument --question: must not be empty",
    ),
    (
        "generate: threshold above 1",
        lambda w: gen(w, "--question", "Why?", "--threshold", "1.5"),
        "argument --threshold: must be >= 0 and <= 1, got 1.5",
    ),
    (
        "generate: no artifact",
        lambda w: ["generate", "--artifact", str(w["root"] / "empty"), "--question", "Why?"],
        "holds no steering artifact (steering.safetensors and steering.json are missing)",
    ),
    (
        "generate: artifact without a key",
        lambda w: [
            "generate",
            "--artifact",
            str(damaged_copy(w, "no_n_heads", drop_key("n_heads"))),
            "--question",
            "Why?",
        ],
        "steering.json is incomplete: key 'n_heads' is missing",
    ),
    (
        "generate: damaged tensors",
        lambda w: [
            "generate",
            "--artifact",
            str(damaged_copy(w, "truncated", truncate_tensors)),
            "--question",
            "Why?",
        ],
        "steering.safetensors is damaged",
    ),
    (
        "generate: other format version",
        lambda w: [
            "generate",
            "--artifact",
            str(damaged_copy(w, "version", set_version)),
            "--question",
            "Why?",
        ],
        "format_version 7 is not supported",
    ),
    (
        "generate: empty questions file",
        lambda w: gen(w, "--questions-file", str(w["root"] / "empty_questions.txt")),
        "empty_questions.txt: holds no lines",
    ),
    (
        "generate: missing questions file",
        lambda w: gen(w, "--questions-file", str(w["root"] / "questions.txt")),
        "questions.txt",
    ),
    (
        "generate: caa without a vector",
        lambda w: gen(w, "--question", "Why?", "--policy", "caa"),
        "holds no CAA vector",
    ),
    (
        "generate: negative alpha",
        lambda w: gen(w, "--question", "Why?", "--alpha", "-1"),
        "argument --alpha: must be >= 0, got -1",
    ),
    (
        "generate: no token budget",
        lambda w: gen(w, "--question", "Why?", "--max-new-tokens", "0"),
        "argument --max-new-tokens: must be >= 1, got 0",
    ),
    (
        "generate: batch size 0",
        lambda w: gen(w, "--question", "Why?", "--batch-size", "0"),
        "argument --batch-size: must be >= 1, got 0",
    ),
    (
        "generate: unknown policy",
        lambda w: gen(w, "--question", "Why?", "--policy", "magic"),
        "argument --policy: invalid choice: 'magic'",
    ),
    (
        "generate: artifact of another model",
        lambda w: gen(w, "--question", "Why?", "--model", str(w["gpt2"])),
        "made for a model with 4 layers x 4 heads of 16, but this model has 3 layers",
    ),
    # fit
    (
        "fit: missing activations",
        lambda w: ["fit", "--activations", str(w["root"] / "nope"), "--out", "o"],
        "--activations",
    ),
    (
        "fit: folder without activations",
        lambda w: [
            "fit",
            "--activations",
            str(w["root"] / "empty"),
            "--out",
            str(w["root"] / "f1"),
        ],
        "holds no activations",
    ),
    (
        "fit: top-k above the heads",
        lambda w: [
            "fit",
            "--activations",
            str(w["acts"]),
            "--out",
            str(w["root"] / "f2"),
            "--top-k",
            "99",
        ],
        "top_k must be between 1 and 16",
    ),
    (
        "fit: fold out of range",
        lambda w: [
            "fit",
            "--activations",
            str(w["acts"]),
            "--out",
            str(w["root"] / "f3"),
            "--fold",
            "5",
        ],
        "--fold must be in 0..1, got 5",
    ),
    (
        "fit: validation fraction",
        lambda w: ["fit", "--activations", str(w["acts"]), "--out", "o", "--val-fraction", "1.5"],
        "argument --val-fraction: must be > 0 and < 1, got 1.5",
    ),
    (
        "fit: out is a file",
        lambda w: ["fit", "--activations", str(w["acts"]), "--out", str(w["root"] / "a_file.txt")],
        "a_file.txt is a file",
    ),
    # collect
    (
        "collect: missing CSV",
        lambda w: [
            "collect",
            "--truthfulqa",
            str(w["root"] / "missing.csv"),
            "--out",
            str(w["root"] / "c1"),
        ],
        "missing.csv",
    ),
    (
        "collect: limit 0",
        lambda w: ["collect", "--out", "o", "--limit", "0"],
        "argument --limit: must be >= 1, got 0",
    ),
    (
        "collect: layer outside the model",
        lambda w: [
            "collect",
            "--model",
            str(w["tiny"]),
            "--limit",
            "4",
            "--out",
            str(w["root"] / "c2"),
            "--caa-layer",
            "9",
        ],
        "--caa-layer 9 is not a layer of this model (0..3)",
    ),
    # figures
    (
        "figures: not a run",
        lambda w: ["figures", "--run", str(w["root"] / "empty"), "--out", str(w["root"] / "figs")],
        "config.json does not exist",
    ),
    ("figures: missing run", lambda w: ["figures", "--run", str(w["root"] / "no_run")], "--run"),
    # ablate
    (
        "ablate: missing artifact",
        lambda w: [
            "ablate",
            "--artifact",
            str(w["root"] / "empty"),
            "--out",
            str(w["root"] / "a1"),
        ],
        "holds no probes artifact",
    ),
    (
        "ablate: mean without activations",
        lambda w: [
            "ablate",
            "--artifact",
            str(w["artifact"]),
            "--out",
            str(w["root"] / "a2"),
            "--mode",
            "mean",
            "--questions",
            "2",
        ],
        "--kind mean needs --activations",
    ),
    (
        "ablate: unknown metric",
        lambda w: ["ablate", "--artifact", "x", "--out", "o", "--metric", "magic"],
        "argument --metric: invalid choice: 'magic'",
    ),
    # mc-datasets
    (
        "mc-datasets: missing data folder",
        lambda w: [
            "mc-datasets",
            "--data",
            str(w["root"] / "nodata"),
            "--out",
            str(w["root"] / "m1"),
        ],
        "nodata does not exist",
    ),
    (
        "mc-datasets: unknown dataset",
        lambda w: [
            "mc-datasets",
            "--data",
            str(w["root"]),
            "--out",
            str(w["root"] / "m2"),
            "--datasets",
            "trivia",
        ],
        "unknown multiple-choice dataset 'trivia'",
    ),
    (
        "mc-datasets: caa",
        lambda w: [
            "mc-datasets",
            "--data",
            str(w["root"]),
            "--out",
            str(w["root"] / "m3"),
            "--methods",
            "caa",
        ],
        "need a CAA vector",
    ),
    (
        "mc-datasets: negative limit",
        lambda w: ["mc-datasets", "--out", "o", "--limit", "-1"],
        "argument --limit: must be >= 0, got -1",
    ),
    # bench
    (
        "bench: unknown entry",
        lambda w: ["bench", "--only", "nope", "--out", str(w["root"] / "b.json")],
        "unknown benchmark 'nope'",
    ),
    # no command
    ("no such command", lambda w: ["translate"], "invalid choice: 'translate'"),
]


@pytest.mark.parametrize(
    ("arguments", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_input_is_one_line(world, arguments, expected, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(cli.main(arguments(world)))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # no bars
    assert len(lines) == 1, err
    assert lines[0].startswith("fasb-lens: error: ") and "Traceback" not in err
    assert expected in lines[0], lines[0]


def test_verbose_shows_the_traceback(world, capsys) -> None:
    code = cli.main(
        ["-v", "generate", "--artifact", str(world["root"] / "empty"), "--question", "Why?"]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and "Traceback" in err
        and err.rstrip().splitlines()[-1].startswith("fasb-lens: error: ")
    )


def test_a_bug_keeps_its_traceback(world, capsys, monkeypatch) -> None:
    from fasb_lens.commands import figures

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(figures, "run", broken)
    assert cli.main(["figures", "--run", str(world["root"])]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "this is a bug, please report it" in err


def test_a_failed_fit_leaves_no_artifact(world) -> None:
    out = world["root"] / "failed_fit"
    assert (
        cli.main(
            [
                "fit",
                "--activations",
                str(world["acts"]),
                "--out",
                str(out),
                "--top-k",
                "99",
                "--no-progress",
            ]
        )
        == 2
    )
    assert not out.exists() or not list(out.iterdir())
    assert not list(world["root"].glob(".failed_fit*"))


def test_truthfulqa_csv_picks_up_the_mc_task_beside_it(world) -> None:
    from fasb_lens.data import load_questions

    folder = world["root"] / "with_mc"
    folder.mkdir()
    (folder / "TruthfulQA.csv").write_text(CSV_HEADER + GOOD_ROW)
    (folder / "mc_task.json").write_text(
        json.dumps(
            [
                {
                    "question": "Is the sky blue?",
                    "mc1_targets": {"Yes": 1, "No": 0},
                    "mc2_targets": {"Yes": 1, "No": 0},
                }
            ]
        )
    )
    (question,) = load_questions(str(folder / "TruthfulQA.csv"))
    assert question.mc1_targets == (("Yes", 1), ("No", 0))
