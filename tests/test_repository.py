"""The repository keeps its promises: CI runs the README's commands, the code is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> list[str]:
    """Command lines of the code block that follows ``<!-- marker -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    assert match, f"README has no code block after <!-- {marker} -->"
    return [line for line in match.group(1).splitlines() if line.strip()]


@pytest.mark.parametrize("marker", ["ci:setup", "ci:test"])
def test_ci_runs_the_readme_commands_verbatim(marker: str) -> None:
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in readme_block(marker):
        assert command.strip() in ci_lines, f".ci/run does not run the README's {command!r}"


def test_ruff_is_clean() -> None:
    beside = Path(sys.executable).with_name("ruff")
    ruff = str(beside) if beside.is_file() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the dev extra)")
    result = subprocess.run(
        [ruff, "check", "fasb_lens", "tests", "notebooks"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_pickle_in_the_library() -> None:
    for path in (ROOT / "fasb_lens").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "torch.load(" not in text, path
