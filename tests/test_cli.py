"""The command line: its commands, the paper's spellings, what the commands write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fasb_lens import cli
from fasb_lens.commands import demo, download_model, mc_datasets
from fasb_lens.evaluation.config import ExperimentConfig
from fasb_lens.options import from_args
from fasb_lens.steering import Steering


def test_parser_knows_the_commands() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["demo"]).handler is demo.run
    assert parser.parse_args(["bench", "--only", "activations"]).only == ["activations"]
    assert parser.parse_args(["download-model"]).handler is download_model.run
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-command"])
    # only the command being run gets its options built
    assert cli.build_parser(["demo"]).parse_args(["demo", "--top-k", "3"]).top_k == 3


def test_the_papers_spellings_are_accepted() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["reproduce", "--truthfulqa", "x.csv", "--out", "o", "--folds", "3"]
        + ["--methods", "baseline,iti", "fasb", "--metrics", "mc"]
    )
    assert (args.data, args.n_folds, args.tasks) == ("x.csv", 3, ["mc"])
    config = from_args(ExperimentConfig, args, data="mini")
    assert config.policies == ("none", "fixed", "fasb") and config.tasks == ("mc",)
    args = parser.parse_args(["evaluate-mc", "--dataset", "copa", "--out", "o"])
    assert args.handler is mc_datasets.run and args.datasets == ["copa"]


def test_seeds_are_listed_or_given_one_by_its_alias(tmp_path) -> None:
    from fasb_lens.commands.reproduce import settings

    parser = cli.build_parser()

    def seeds(*args: str) -> tuple[int, ...]:
        parsed = parser.parse_args(["reproduce", "--truthfulqa", "mini", "--out", "o", *args])
        return settings(parsed).seeds

    assert seeds() == (42,)  # the authors' split
    assert seeds("--seeds", "42,1", "2") == seeds("--seeds", "42", "1", "2") == (42, 1, 2)
    assert seeds("--seed", "7") == seeds("--seeds", "7") == seeds("--seed", "7", "--seeds", "7")
    with pytest.raises(ValueError, match="--seed 7 and --seeds 42 1 disagree"):
        seeds("--seed", "7", "--seeds", "42,1")
    with pytest.raises(ValueError, match="names a seed twice"):
        seeds("--seeds", "1,1")
    with pytest.raises(SystemExit):
        seeds("--seeds", "1,x")
    # --seed over a config file's seeds replaces them
    config = tmp_path / "config.json"
    config.write_text(json.dumps(ExperimentConfig(data="mini", seeds=(42, 1)).to_dict()))
    assert seeds("--config", str(config)) == (42, 1)
    assert seeds("--config", str(config), "--seed", "3") == (3,)


def test_train_fraction_sweep_is_one_command(tiny_llama_folder, tmp_path, capsys) -> None:
    from fasb_lens.evaluation.records import load_fold_artifacts

    common = ["reproduce", "--truthfulqa", "mini", "--questions", "8"]
    common += ["--model", str(tiny_llama_folder)]
    common += ["--policies", "none,fasb", "--tasks", "mc", "--mc-source", "csv", "--top-k", "2"]
    common += ["--no-calibrate", "--no-progress", "--out", str(tmp_path)]
    assert cli.main([*common, "--train-fraction", "0.5", "1"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| train_fraction | policy | mc1 | mc2 | mc3 |")
    assert table.count("\n") == 2 + 2 * 2
    assert (tmp_path / "train_fraction.csv").is_file()
    assert not (tmp_path / "train_fraction_0.5" / "activations").exists()  # shared
    half = load_fold_artifacts(tmp_path / "train_fraction_0.5", 0)[1].split
    whole = load_fold_artifacts(tmp_path / "train_fraction_1", 0)[1].split
    assert set(half["train"]) < set(whole["train"])
    assert len(half["train"]) == round(len(whole["train"]) / 2)
    assert half["val"] == whole["val"] and half["test"] == whole["test"]


def test_reproduce_starts_from_a_config_file(tiny_llama_folder, tmp_path, capsys) -> None:
    """``--config`` gives the settings (a run's config.json is one); options given on the
    command line override them, and the run's config.json records the result."""
    settings = ExperimentConfig(
        data="mini",
        n_questions=8,
        policies=("none", "fixed"),
        tasks=("mc",),
        mc_source="csv",
        top_k=2,
        calibrate=False,
        strengths=("fixed=3",),
    )
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"command": "reproduce", **settings.to_dict()}))
    out = tmp_path / "run"
    command = ["reproduce", "--config", str(path), "--model", str(tiny_llama_folder)]
    command += ["--top-k", "3", "--no-progress", "--out", str(out)]
    assert cli.main(command) == 0
    assert "| fixed |" in capsys.readouterr().out
    written = json.loads((out / "config.json").read_text())
    assert written["command"] == "reproduce" and written["top_k"] == 3
    assert written["strengths"] == ["fixed=3"] and written["policies"] == ["none", "fixed"]
    assert written["model"]["name"] == str(tiny_llama_folder)


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fasb_lens.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "download-model" in result.stdout and "bench" in result.stdout


@pytest.mark.slow
def test_demo_runs_offline(default_model, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("fasb_lens.models.ModelOptions.load", lambda self, **k: default_model)
    assert cli.main(["demo", "--out", str(tmp_path), "--no-progress", "--no-png"]) == 0
    out = capsys.readouterr().out
    assert "30 layers x 9 heads of 64" in out and "majority baseline" in out
    assert out.count("   without steering [") == 4 and out.count("   FASB             [") == 4
    assert out.count("   ITI              [") == 4 and "calibrated on validation True x Info" in out
    assert out.count("   FASB: ") == 4 and "truthful     " in out
    figures = ("heads_accuracy", "anchored_heads", "p_true_distributions", "trajectories")
    for name in (*figures, "token_view"):
        assert (tmp_path / f"{name}.html").is_file()
    assert (tmp_path / "artifact" / "steering.safetensors").is_file()
    gained = any(line.endswith("-> truthful)") for line in out.splitlines())
    assert gained or "FASB gained no answer here." in out  # a gain, or why there is none


def test_the_demo_says_why_fasb_gained_nothing() -> None:
    def row(alpha, value):
        return {"task": "generation", "policy": "fasb", "alpha": alpha, "true_x_info": value}

    calibration = SimpleNamespace(
        questions=15,
        sweep=[row(0.5, 0.6), row(8.0, 0.4), row(16.0, 0.2), {**row(1.0, 0.9), "task": "mc"}],
        unsteered={"generation": {"true_x_info": 0.6}},
    )
    why = demo._why_no_gain(calibration, 0.5)
    assert "15 validation questions" in why and "strength 0.5 scored True x Info 60%" in why
    assert "against 60% without steering" in why
    assert "every stronger strength tried (2) scored less, 40% at best" in why
    calibration.unsteered = {}
    assert "without steering" not in demo._why_no_gain(calibration, 0.5)


def test_collect_and_fit_commands(tiny_llama_folder, tmp_path, capsys) -> None:
    acts, artifact = tmp_path / "acts", tmp_path / "artifact"
    common = ["--no-progress", "--json"]
    assert (
        cli.main(
            [
                "collect",
                "--model",
                str(tiny_llama_folder),
                "--truthfulqa",
                "mini",
                "--limit",
                "20",
                "--out",
                str(acts),
                *common,
            ]
        )
        == 0
    )
    collected = json.loads(capsys.readouterr().out)
    assert collected["questions"] == 20
    assert collected["probing"]["shape"][1:] == [4, 4, 16]
    assert collected["tuning"]["prompts"] == collected["probing"]["prompts"]
    assert (
        cli.main(
            [
                "fit",
                "--activations",
                str(acts),
                "--out",
                str(artifact),
                "--top-k",
                "5",
                "--direction",
                "prototype",
                *common,
            ]
        )
        == 0
    )
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["split"]["protocol"] == "authors"
    assert fitted["split"]["questions"] == {"train": 8, "val": 2, "test": 10}
    assert len(fitted["anchored_heads"]) == 5 and len(fitted["best_heads"]) == 5
    assert fitted["val_majority_baseline"] >= 0.5
    steering = Steering.load(artifact)
    assert (
        steering.direction_kind == "prototype"
        and [str(h) for h in steering.heads] == fitted["anchored_heads"]
    )
    assert (artifact / "probes.safetensors").is_file()


def test_generate_command(tiny_llama_folder, tmp_path, capsys) -> None:
    acts, artifact = tmp_path / "acts", tmp_path / "artifact"
    quiet = ["--no-progress", "--json"]
    model = ["--model", str(tiny_llama_folder)]
    cli.main(["collect", *model, "--limit", "12", "--out", str(acts), "--caa-layer", "1", *quiet])
    cli.main(["fit", "--activations", str(acts), "--out", str(artifact), "--top-k", "3", *quiet])
    capsys.readouterr()
    questions = tmp_path / "questions.txt"
    questions.write_text("Do goldfish remember things?\n\nIs the Great Wall visible from space?\n")
    common = ["generate", "--artifact", str(artifact), *model, "--max-new-tokens", "6"]
    assert (
        cli.main(
            [
                *common,
                "--questions-file",
                str(questions),
                "--policy",
                "fasb",
                "--threshold",
                "1",
                "--backtrack-tokens",
                "2",
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["question"] for line in lines] == [
        "Do goldfish remember things?",
        "Is the Great Wall visible from space?",
    ]
    for line in lines:
        assert {"prompt_ids", "output_ids", "text", "answer", "steps"} <= set(line)
        assert line["trigger_step"] == 1 and line["policy"] == "fasb"
        assert len(line["prompt_ids"]) > 20  # instruction + primer + question
    assert (
        cli.main([*common, "--prompt", "The quick brown", "--policy", "caa", "--alpha", "2"]) == 0
    )
    assert "[caa] no trigger" in capsys.readouterr().out
    assert (
        cli.main(
            [
                *common,
                "--question",
                "Why?",
                "--format",
                "chat",
                "--mode",
                "reference",
                "--policy",
                "none",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("Q: Why?\nA: ")
    question = ["--question", "Why?", "--policy", "fasb", "--threshold", "1"]
    question += ["--backtrack-tokens", "2"]
    for color in ("never", "auto"):  # captured output is no terminal: auto is plain too
        assert cli.main([*common, *question, "--color", color]) == 0
        out = capsys.readouterr().out
        assert "\x1b[" not in out and "triggered at step 1" in out
        assert "   tokens: [-" in out and "|trigger p=" in out  # the short marked view
    assert cli.main([*common, *question, "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out and "\x1b[1;97;41m ↺ p=" in out and "steered at strength" in out


def test_color_choice(monkeypatch) -> None:
    from fasb_lens.commands.generate import color_palette

    class Terminal:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLORTERM", "truecolor")
    assert color_palette("auto", Terminal(True)) == "truecolor"
    assert color_palette("auto", Terminal(False)) == "none"
    assert color_palette("never", Terminal(True)) == "none"
    assert color_palette("always", Terminal(False)) == "truecolor"
    monkeypatch.setenv("NO_COLOR", "1")
    assert color_palette("auto", Terminal(True)) == "none"
    assert color_palette("always", Terminal(True)) == "truecolor"
    monkeypatch.delenv("COLORTERM")
    assert color_palette("always", Terminal(True)) == "256"


def test_ablate_command(tiny_llama_folder, tmp_path, capsys) -> None:
    acts, artifact, out = tmp_path / "acts", tmp_path / "artifact", tmp_path / "ablation"
    quiet = ["--no-progress", "--json"]
    model = ["--model", str(tiny_llama_folder)]
    cli.main(["collect", *model, "--limit", "12", "--out", str(acts), "--caa-layer", "-1", *quiet])
    cli.main(["fit", "--activations", str(acts), "--out", str(artifact), "--top-k", "3", *quiet])
    capsys.readouterr()
    common = ["ablate", "--artifact", str(artifact), "--questions", "2", "--out", str(out)]
    common += ["--no-png", *quiet]
    assert cli.main([*common, "--estimator", "exact"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert exact["estimator"] == "exact" and len(exact["largest_drops"]) == 10
    assert (out / "ablation_exact_logprob_margin_zero.safetensors").is_file()
    assert (out / "ablation_exact_logprob_margin_zero.html").is_file()
    assert cli.main([*common, "--estimator", "attribution"]) == 0
    assert json.loads(capsys.readouterr().out)["estimator"] == "attribution"
    assert cli.main([*common, "--method", "patching", "--metric", "p_true"]) == 0
    captured = capsys.readouterr()
    patched = json.loads(captured.out)
    assert patched["kind"] == "patch" and (out / "ablation_patching_p_true_patch.json").is_file()
    bars = [part for part in captured.err.split("\r") if "it/s" in part]
    assert patched["seconds"] > 0  # timed
    assert all(bar.startswith("Loading weights") for bar in bars)  # no bar over the heads
    assert (
        cli.main([*common, "--kind", "mean", "--activations", str(acts), "--heads", "anchored"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["kind"] == "mean"


@pytest.mark.parametrize(
    "command",
    ["collect", "generate", "reproduce", "mc-datasets", "ablate", "demo", "bench", "gpu-check"],
)
def test_every_model_loading_command_takes_the_model_options(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    shown = capsys.readouterr().out
    flags = ("--model", "--device", "--device-map", "--n-devices")
    for flag in (*flags, "--dtype") if command != "gpu-check" else (*flags, "--dtypes"):
        assert flag in shown, (command, flag)


def test_fit_takes_the_device_of_its_probes(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    assert "--device" in capsys.readouterr().out


def test_a_gated_model_names_hf_token(monkeypatch) -> None:
    """What the hub's refusal of a gated model becomes (no network: the refusal is made
    here as huggingface_hub raises it)."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError
    from transformers import AutoTokenizer

    from fasb_lens.models import ModelAccessError, load_model

    def refuse(name, *args, **kwargs):
        response = httpx2.Response(401, request=httpx2.Request("GET", f"https://hf.co/{name}"))
        try:
            raise GatedRepoError(
                "401 Client Error: access to model is restricted", response=response
            )
        except GatedRepoError as error:
            raise OSError(f"You are trying to access a gated repo.\n{error}") from error

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ModelAccessError, match="HF_TOKEN is not set") as caught:
        load_model("meta-llama/Llama-2-7b-chat-hf")
    assert "huggingface.co/meta-llama/Llama-2-7b-chat-hf" in str(caught.value)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(ModelAccessError, match="HF_TOKEN is set but its account"):
        load_model("meta-llama/Llama-2-7b-chat-hf")


def test_a_run_resumes_on_other_devices(tiny_llama_folder) -> None:
    """Where a model ran is not part of a run's settings; its dtype is."""
    from fasb_lens.models import ModelOptions

    here = ExperimentConfig(data="mini", model=ModelOptions(str(tiny_llama_folder), "float32"))
    there = ExperimentConfig(
        data="mini", model=ModelOptions(str(tiny_llama_folder), "float32", n_devices=2)
    )
    assert here.to_dict() == there.to_dict()
    assert here.to_dict()["model"] == {"name": str(tiny_llama_folder), "dtype": "float32"}
    with pytest.raises(ValueError, match="--device is one device"):
        ModelOptions(device="cuda", n_devices=2)
