"""What several commands share: output flags, summaries, the data folder, models."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fasb_lens import storage


def output_flags(parser: argparse.ArgumentParser, json_help: str | None = None) -> None:
    """``--no-progress`` (and ``--json`` when the command can print JSON)."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if json_help:
        parser.add_argument("--json", action="store_true", help=json_help)


def print_wall_time(start: float) -> None:
    """End a long command with its wall time on stderr, counted from ``start`` (a
    ``time.perf_counter()`` reading taken when the command began)."""
    print(f"wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)


def report(summary: dict[str, Any], as_json: bool) -> None:
    """Print a command's summary: one JSON object, or readable lines."""
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key == "best_heads":
            print("best_heads:")
            for row in value:
                print(
                    f"  L{row['layer']}H{row['head']}  validation {row['val_accuracy']:.3f}  "
                    f"training {row['train_accuracy']:.3f}"
                )
        else:
            print(f"{key}: {value}")


def settings_from(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """A command's settings (``cls``) from ``--config FILE`` if given, with the options
    given on the command line laid over them (their parser built with ``only_given``)."""
    from fasb_lens import storage
    from fasb_lens.options import from_args

    base = None
    if getattr(args, "config", None):
        base = cls.from_dict(
            storage.read_json(args.config, f"the settings of a run ({cls.__name__})")
        )
    return from_args(cls, args, base, **values)


def data_dir(value: str | None) -> Path | None:
    """The data folder: the option's value, else ``$FASB_LENS_DATA``."""
    value = value or os.environ.get("FASB_LENS_DATA")
    return Path(value) if value else None


def model_for(model_id: str, options: Any):
    """The model an artifact was made with (or the one ``options`` name, a
    :class:`~fasb_lens.models.ModelOptions`), loaded in their dtype, where they place it."""
    from dataclasses import replace

    from fasb_lens.models import EMBEDDED_MODEL_ID

    name = options.name or (None if model_id == EMBEDDED_MODEL_ID else model_id)
    return replace(options, name=name).load()


RUN_KINDS = {
    "reproduce": (storage.RECORDS,),
    "mc-datasets": (storage.MC_DATASETS_LOG,),
    "collect": (storage.QUESTIONS,),
    "fit": (f"{storage.STEERING}.json",),
    "ablate": (storage.ABLATION_LOG,),
}
"""Files that mark a folder as written by a command (run folders also name their command
in ``config.json``)."""


def _written_by(path: Path) -> str | None:
    """The command that wrote the folder ``path``, if any."""
    from fasb_lens.evaluation.run import run_command

    named = run_command(path)
    if named is not None:
        return named
    marked = [
        kind for kind, markers in RUN_KINDS.items() if any((path / m).exists() for m in markers)
    ]
    return marked[0] if marked else None


def output_folder(value: str, kind: str) -> Path:
    """``--out`` as a folder for a ``kind`` command: refused if it is a file or holds what
    another command wrote."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; expected a folder (new or from `{kind}`)")
    if path.is_dir():
        other = _written_by(path)
        if other is not None and other != kind:
            raise ValueError(
                f"--out {path} holds the output of `{other}`, not of `{kind}`; "
                "choose another folder"
            )
    return path


def existing_folder(value: str, option: str, what: str) -> Path:
    """A folder the user named, refused with one line if it is not there."""
    path = Path(value)
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        raise ValueError(f"{option} {path} {state}; expected {what}")
    return path
