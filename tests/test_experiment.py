"""The experiment runner: outputs, resuming after a kill, determinism, bad settings, figures."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from fasb_lens.evaluation import held_out
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.evaluation.experiment import Experiment
from fasb_lens.evaluation.records import load_run, record_trace
from fasb_lens.evaluation.run import RunFolder
from fasb_lens.models import ModelOptions
from fasb_lens.policies import make_policy
from fasb_lens.storage import JsonlLog

CONFIG = dict(
    data="mini",
    n_questions=8,
    policies=("none", "fixed", "caa", "fasb", "after_question", "fasb_random", "detector_only"),
    judges=("bleu-acc", "rouge-l-acc", "info-check"),
    top_k=4,
    alpha=4.0,
    strengths=("caa=2",),
    caa_layer=1,
    threshold=0.6,
    backtrack_tokens=2,
    max_new_tokens=6,
    mc_source="csv",
    batch_size=3,
    control_seeds=2,
    top_k_candidates=(2, 4),
)
POLICIES = ("none", "fixed", "caa", "fasb", "after_question", "fasb_random/0", "fasb_random/1")
"""What each question is generated with (the control once per draw)."""
QUESTION = ("fasb_question", "fasb_random_question/0", "fasb_random_question/1")
"""What each question is also scored with, under the leak-free protocol."""
MC_ONLY = ("detector_only",)
"""What each question is scored with in multiple choice only (a detector does not steer)."""
GRIDS = {"fixed": (1.0, 4.0), "fasb": (1.0, 4.0), "caa": (0.5, 2.0)}


@pytest.fixture(scope="module", autouse=True)
def small_grids(small_searches):
    """Two strengths per sweep keep the calibration of these tiny runs quick."""
    with small_searches(GRIDS, quantiles=(0.5,)):
        yield


def run(tiny_llama, out: Path, **changes) -> dict:
    config = ExperimentConfig(**{**CONFIG, **changes})
    return Experiment(config, out, model=tiny_llama, progress=False).run()


@pytest.fixture(scope="module")
def finished(tiny_llama, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    return out, run(tiny_llama, out)


def test_a_run_writes_everything(finished) -> None:
    out, summary = finished
    for name in (
        "config.json",
        "records.jsonl",
        "judgements.jsonl",
        "results.json",
        "results.csv",
        "answers.csv",
        "per_question.csv",
        "table.md",
    ):
        assert (out / name).is_file(), name
    assert (out / "folds" / "seed42" / "fold1" / "steering.safetensors").is_file()
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["phases"]) >= {"anchoring and calibration", "multiple choice"}
    profile = timings["profile"]
    search = "anchoring and calibration/fold 0/calibration/mc/mc search fasb"
    assert profile[search]["forwards"] > 0 and profile[search]["calls"] >= 1
    assert "generation/fold 1/fasb" in profile and "judging and summary/bleu-acc" in profile
    assert (out / "folds" / "seed42" / "fold0" / "caa.safetensors").is_file()
    config, records, judgements = load_run(out)
    assert config.n_questions == 8 and config.seeds == (42,) and config.prompt == "builtin"
    assert {r["seed"] for r in records} == {42} and {j["seed"] for j in judgements} == {42}
    assert summary["seeds"] == [42] and set(summary["policies"]["fasb"]["per_fold"]) == {"0", "1"}
    # 8 questions, each tested once over the 2 folds: every method on both tasks, the
    # leak-free protocol's policies on multiple choice; three judges
    assert len(records) == 8 * (2 * len(POLICIES) + len(QUESTION) + len(MC_ONLY))
    assert {r["policy"] for r in records} == {*POLICIES, *QUESTION, *MC_ONLY}
    assert len(judgements) == 8 * len(POLICIES) * 3
    assert set(summary["policies"]) == {
        *CONFIG["policies"],
        "fasb_question",
        "fasb_random_question",
    }
    assert set(summary["policies"]["fasb_random"]["seeds"]) == {"0", "1"}
    share = summary["direction_share"]["fasb"]["mc2"]
    assert share["gain"] == pytest.approx(
        summary["policies"]["fasb"]["mean"]["mc2"] - summary["policies"]["none"]["mean"]["mc2"]
    )
    rates = summary["policies"]["fasb"]["mean"]
    assert 0 <= rates["steered_true"] <= 1 and 0 <= rates["steered_false"] <= 1
    mean = summary["policies"]["fasb"]["mean"]
    assert 0 <= mean["mc1"] <= 1 and 0 <= mean["mc2"] <= 1
    pair = mean["bleu-acc x info-check"]
    assert pair["true_x_info"] == pytest.approx(pair["true"] * pair["info"], abs=1e-9)
    low, high = summary["policies"]["fasb"]["ci95"]["mc2"]
    assert low <= mean["mc2"] <= high
    stated = {(c["a"], c["b"]) for c in summary["comparisons"]}
    assert {("fasb", "none"), ("fasb", "fasb_random"), ("fasb", "fixed")} <= stated
    assert ("fasb", "detector_only") in stated
    assert ("fasb_question", "fasb_random_question") in stated
    assert (out / "comparisons.md").is_file() and (out / "comparisons.csv").is_file()
    table = (out / "table.md").read_text()
    assert table.startswith("| Policy | MC1 | MC2 | MC3 | MC steered (true / false) | triggered |")
    assert "bleu-acc x info-check" in table and table.count("\n") == 2 + 9 + 2 + 2
    assert table.endswith("\nSplit seed 42 (2 folds); n counts questions.\n")
    assert "| (chance) |" in table and "| (fewest words) |" in table
    chance = summary["references"]["chance"]["mean"]
    assert 0 < chance["mc1"] < 0.5 and 0 < chance["mc2"] < 1


def test_mc_records_hold_every_answer(finished) -> None:
    out, _ = finished
    _, records, _ = load_run(out)
    record = next(r for r in records if r["task"] == "mc" and r["policy"] == "fasb")
    labels = [row["label"] for row in record["answers"] if row["set"] == "mc2"]
    assert 1 in labels and 0 in labels
    lines = (out / "answers.csv").read_text().splitlines()
    assert lines[0].startswith("seed,fold,question_id,policy,set,answer,label,log_prob,triggered")
    assert len(lines) - 1 == sum(len(r["answers"]) for r in records if r["task"] == "mc")


def test_per_question_rows_give_the_table(finished) -> None:
    """Each record is one row of per_question.csv, and the table's numbers follow from the
    rows: a fold's MC2 and a judge's truthful rate are the means of their columns."""
    out, summary = finished
    _, records, _ = load_run(out)
    with (out / "per_question.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records)
    for fold in ("0", "1"):
        mine = [r for r in rows if r["policy"] == "fasb" and r["fold"] == fold]
        mc2 = [float(r["mc2"]) for r in mine if r["task"] == "mc"]
        per_fold = summary["policies"]["fasb"]["per_fold"][fold]
        assert sum(mc2) / len(mc2) == pytest.approx(per_fold["mc2"])
        verdicts = [int(r["bleu-acc"]) for r in mine if r["task"] == "generation"]
        assert verdicts and set(verdicts) <= {0, 1}
        assert sum(verdicts) / len(verdicts) == pytest.approx(
            per_fold["bleu-acc x info-check"]["true"]
        )
    answer = next(r for r in rows if r["task"] == "generation" and r["policy"] == "fasb")
    assert answer["answer"] and answer["triggered"] in {"0", "1"} and answer["mc2"] == ""


def test_killed_run_resumes_to_the_same_table(tiny_llama, finished, tmp_path, monkeypatch) -> None:
    out, summary = finished
    real_append = JsonlLog.append
    calls = {"n": 0}

    # killed inside fold 1's multiple choice: after the 8 unsteered answers and fold 0's
    # 4 test questions under every multiple-choice policy (scored together, one chunk)
    kept = 8 + 4 * (len(POLICIES) + len(QUESTION) + len(MC_ONLY)) + 4

    def dying_append(self, record):
        calls["n"] += 1
        if calls["n"] == kept + 1:
            raise KeyboardInterrupt
        real_append(self, record)

    monkeypatch.setattr(JsonlLog, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_llama, tmp_path)
    monkeypatch.setattr(JsonlLog, "append", real_append)
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == kept
    # a torn line, as a kill in the middle of a write would leave
    with (tmp_path / "records.jsonl").open("a") as handle:
        handle.write('{"fold": 0, "question_')
    # the interrupted run's table so far, each number with the questions it rests on
    partial = Experiment(
        ExperimentConfig(**CONFIG), tmp_path, model=tiny_llama, progress=False
    ).summarize()
    counts = [m["mean"]["n_mc"] + m["mean"]["n_generation"] for m in partial["policies"].values()]
    written = [
        json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()[:kept]
    ]
    done = {(r["policy"].split("/")[0], r["question_id"], r["task"]) for r in written}
    assert sum(counts) == len(done) and all(n <= 16 for n in counts)
    assert "| n (MC / gen.) |" in (tmp_path / "table.md").read_text()
    evaluated: list[str] = []

    class CountingChoice(held_out.MultipleChoice):
        def __init__(self, model, question, **kwargs):
            evaluated.append(question.id)
            super().__init__(model, question, **kwargs)

    monkeypatch.setattr(held_out, "MultipleChoice", CountingChoice)
    resumed = run(tiny_llama, tmp_path)
    assert len(evaluated) == 4  # fold 0's questions, finished before the kill, were not redone
    assert (tmp_path / "table.md").read_text() == (out / "table.md").read_text()
    assert json.dumps(resumed, sort_keys=True) == json.dumps(summary, sort_keys=True)


def test_bad_settings(tiny_llama, finished, tmp_path) -> None:
    out, _ = finished
    with pytest.raises(ValueError, match=r"holds a run with other settings \(alpha\)"):
        run(tiny_llama, out, alpha=9.0)
    with pytest.raises(ValueError, match="unknown policy .magic."):
        ExperimentConfig(data="mini", policies=("magic",))
    with pytest.raises(ValueError, match=r"--questions 500 is more than the 94 questions"):
        run(tiny_llama, tmp_path / "big", n_questions=500)
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        ExperimentConfig(data="mini", primer="nope.txt")
    with pytest.raises(ValueError, match="unknown judge"):
        ExperimentConfig(data="mini", judges=("gpt-judge",))
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
        ExperimentConfig(data="mini", model=ModelOptions(dtype="half"))
    with pytest.raises(ValueError, match="have no mc_task.json targets"):
        run(tiny_llama, tmp_path / "mc", mc_source="mc_task", tasks=("mc",))


def test_a_run_started_before_a_setting_existed_resumes(finished) -> None:
    out, _ = finished
    saved = json.loads((out / "config.json").read_text())
    older = {k: v for k, v in saved.items() if k not in ("train_fraction", "mc_task")}
    (out / "config.json").write_text(json.dumps(older))
    load = ExperimentConfig.from_dict
    try:
        RunFolder(out, ExperimentConfig(**CONFIG), load=load, command="reproduce")
        changed = ExperimentConfig(**CONFIG, train_fraction=0.5)
        with pytest.raises(ValueError, match=r"other settings \(train_fraction\)"):
            RunFolder(out, changed, load=load, command="reproduce")
    finally:
        (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="train_fraction must be in"):
        ExperimentConfig(data="mini", train_fraction=0.0)


def test_figures_of_a_run(finished, tmp_path) -> None:
    from fasb_lens.run_figures import render_run

    out, _ = finished
    made = render_run(out, tmp_path, png=False)
    names = {path.stem for path, _ in made}
    assert {
        "heads_accuracy",
        "heads_accuracy_sorted",
        "anchored_heads",
        "p_true_distributions_probe",
        "p_true_distributions_context",
        "methods",
        "direction_share",
        "sweep_top_k",
        "sweep_threshold",
        "sweep_alpha_mc_mc2",
    } <= names
    assert all(path.suffix == ".html" and path.is_file() for path, _ in made)
    _, records, _ = load_run(out)
    record = next(r for r in records if r["task"] == "generation" and r["triggered"])
    trace = record_trace(record)
    assert trace.triggered and trace.answer == record["answer"]
    assert trace.backtracks and trace.backtracks[0]["discarded_ids"] == trace.discarded_ids
    assert all(step.token_id >= 0 for step in trace.steps)  # nothing guessed


def test_publish_copies_a_finished_run(finished, tmp_path) -> None:
    from fasb_lens.evaluation.publish import publish

    out, summary = finished
    written = publish(out, tmp_path / "results")
    names = sorted(path.name for path in written)
    assert names == [
        "truthfulqa_answers.csv.gz",
        "truthfulqa_comparisons.csv",
        "truthfulqa_comparisons.md",
        "truthfulqa_config.json",
        "truthfulqa_per_question.csv.gz",
        "truthfulqa_results.csv",
        "truthfulqa_results.json",
        "truthfulqa_table.md",
        "truthfulqa_timings.json",
    ]
    published = json.loads((tmp_path / "results" / "truthfulqa_results.json").read_text())
    assert published == json.loads(json.dumps(summary))
    packed = (tmp_path / "results" / "truthfulqa_per_question.csv.gz").read_bytes()
    assert gzip.decompress(packed) == (out / "per_question.csv").read_bytes()
    assert publish(out, tmp_path / "results") == written  # published again: the same bytes
    assert (tmp_path / "results" / "truthfulqa_per_question.csv.gz").read_bytes() == packed
    # an unfinished run (records of fold 0 only) is refused, naming what is missing
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((out / "config.json").read_text())
    with pytest.raises(ValueError, match="has not finished: it has no results.json yet"):
        publish(partial, tmp_path / "results")
    cut = json.loads((out / "results.json").read_text())
    cut["policies"]["fasb"]["mean"]["n_mc"] = 4
    (partial / "results.json").write_text(json.dumps(cut))
    with pytest.raises(ValueError, match="policy fasb has not finished mc"):
        publish(partial, tmp_path / "results")
    with pytest.raises(ValueError, match="is not a finished `reproduce` or `mc-datasets` run"):
        publish(tmp_path / "results", tmp_path / "elsewhere")


SMALL = dict(
    policies=("none", "fasb", "fasb_random"), judges=("bleu-acc", "info-check"), control_seeds=1
)
"""A smaller run for the split seeds' tests: one method, its control, two judges."""


def _without_timings(record: dict) -> dict:
    if "trace" not in record:
        return record
    return {**record, "trace": {k: v for k, v in record["trace"].items() if k != "timings"}}


def test_two_seeds_pool_and_resume_seed_by_seed(tiny_llama, tmp_path, monkeypatch) -> None:
    from fasb_lens.evaluation.folds import FoldSetup

    run(tiny_llama, tmp_path / "alone", **SMALL)
    two = tmp_path / "two"
    real_append = JsonlLog.append

    def dying_append(self, record):  # killed as seed 7's multiple choice begins
        if record.get("seed") == 7 and record.get("task") == "mc":
            raise KeyboardInterrupt
        real_append(self, record)

    monkeypatch.setattr(JsonlLog, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_llama, two, **SMALL, seeds=(42, 7))
    _, written, _ = load_run(two)
    assert {r["seed"] for r in written} == {42, 7}  # seed 42 whole, then seed 7's answers
    anchored, appended = [], []
    real_anchor = FoldSetup._anchor_fold

    def counting_anchor(self, activations, split, widest):
        anchored.append(split.seed)
        return real_anchor(self, activations, split, widest)

    def counting_append(self, record):
        appended.append((record["seed"], "judge" in record))
        real_append(self, record)

    monkeypatch.setattr(FoldSetup, "_anchor_fold", counting_anchor)
    monkeypatch.setattr(JsonlLog, "append", counting_append)
    summary = run(tiny_llama, two, **SMALL, seeds=(42, 7))
    # the finished seed is neither anchored nor evaluated again (only judged: judging
    # comes after every seed)
    assert anchored == [7, 7]
    assert {seed for seed, judged in appended if not judged} == {7}
    assert (two / "folds" / "seed42" / "fold1" / "calibration.json").is_file()
    assert (two / "folds" / "seed7" / "fold0" / "calibration.json").is_file()
    config, records, judgements = load_run(two)
    assert config.seeds == (42, 7) and summary["seeds"] == [42, 7]
    # seed 42's records are those of the run with seed 42 alone
    _, single, single_judged = load_run(tmp_path / "alone")
    mine = {k: _without_timings(r) for k, r in _keyed(records).items() if k[0] == 42}
    assert mine == {k: _without_timings(r) for k, r in _keyed(single).items()}
    assert len(records) == 2 * len(single) and len(judgements) == 2 * len(single_judged)
    assert {r["seed"] for r in judgements} == {42, 7}
    per_fold = summary["policies"]["fasb"]["per_fold"]
    assert list(per_fold) == ["42/0", "42/1", "7/0", "7/1"]
    assert summary["policies"]["fasb"]["mean"]["n_mc"] == 2 * 8  # each question once per seed
    table = (two / "table.md").read_text()
    assert "Split seeds 42, 7 (2 folds each), pooled" in table
    lines = (two / "answers.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in lines[1:]} == {"42", "7"}
    # a control draws its random directions from the split seed too
    control = make_policy("fasb_random", alpha=1.0)
    drawn = {seed: Experiment._drawn(seed, "fasb_random/0", control, "q") for seed in (42, 7)}
    assert drawn[42].seed != drawn[7].seed


def _keyed(records: list[dict]) -> dict:
    return {(r["seed"], r["fold"], r["question_id"], r["task"], r["policy"]): r for r in records}


def test_a_run_folder_without_seeds_still_loads(tiny_llama, finished, tmp_path) -> None:
    import shutil

    out, summary = finished
    old = tmp_path / "old"
    shutil.copytree(out, old)
    # as a run made before seeds wrote it: no seed level, no seed in the records
    for fold in (old / "folds" / "seed42").iterdir():
        fold.rename(old / "folds" / fold.name)
    (old / "folds" / "seed42").rmdir()
    for name in ("records.jsonl", "judgements.jsonl"):
        lines = (old / name).read_text().splitlines()
        rows = [{k: v for k, v in json.loads(line).items() if k != "seed"} for line in lines]
        (old / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    saved = json.loads((old / "config.json").read_text())
    saved.update(config_version=2, seed=42)
    for key in ("seeds", "prompt"):
        del saved[key]
    (old / "config.json").write_text(json.dumps(saved))
    config, records, _ = load_run(old)
    assert config.seeds == (42,) and config.prompt == "builtin"
    assert {r["seed"] for r in records} == {42}
    resumed = Experiment(ExperimentConfig(**CONFIG), old, model=tiny_llama, progress=False)
    assert resumed.finished(42)  # nothing to evaluate again
    assert json.dumps(resumed.run(), sort_keys=True) == json.dumps(summary, sort_keys=True)
    # a run of the other prompt is refused in that folder
    with pytest.raises(ValueError, match=r"other settings \(prompt\)"):
        run(tiny_llama, old, prompt="authors")
