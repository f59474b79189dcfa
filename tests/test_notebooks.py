"""The notebooks: their committed outputs read everywhere (fast), and they run top to
bottom on the embedded model (slow tier)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PNG_MIME = "image/png"
MACHINE_PATH = re.compile(r"/work/|/home/|/tmp/|/root/|site-packages")
"""What a path of the machine that ran a notebook looks like in its outputs."""


def test_there_are_four_notebooks() -> None:
    assert [path.name[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04"]


def _cells(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _code_cells(path: Path) -> list[dict[str, Any]]:
    return [cell for cell in _cells(path) if cell["cell_type"] == "code"]


def _texts(output: dict[str, Any]) -> Iterator[str]:
    """Every text an output holds: a stream's, an error's traceback, each non-image
    representation of a result or a display (figures' JSON included)."""
    text = output.get("text")
    if text is not None:
        yield "".join(text) if isinstance(text, list) else text
    yield from output.get("traceback", ())
    for mime, value in output.get("data", {}).items():
        if not mime.startswith("image/"):  # base64 can spell anything
            yield value if isinstance(value, str) else json.dumps(value)


def _where(path: Path, index: int) -> str:
    return f"{path.name}, code cell {index + 1}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_outputs_were_run_top_to_bottom(path: Path) -> None:
    cells = _code_cells(path)
    counts = [cell.get("execution_count") for cell in cells]
    assert any(cell.get("outputs") for cell in cells), f"{path.name} is saved without outputs"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_interactive_figure_has_a_static_image(path: Path) -> None:
    for index, cell in enumerate(_code_cells(path)):
        mimes = [set(output.get("data", {})) for output in cell.get("outputs", [])]
        if any(PLOTLY_MIME in found for found in mimes):
            assert any(PNG_MIME in found for found in mimes), (
                f"{_where(path, index)}: a plotly figure without a PNG "
                "(display it with fasb_lens.plotting.show)"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_outputs_hold_no_warnings_and_no_machine_paths(path: Path) -> None:
    for index, cell in enumerate(_code_cells(path)):
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", f"{_where(path, index)}: an error"
            assert output.get("name") != "stderr", (
                f"{_where(path, index)}: stderr {''.join(output.get('text', ''))[:200]!r}"
            )
            for text in _texts(output):
                found = MACHINE_PATH.search(text)
                if found:
                    around = text[max(0, found.start() - 60) : found.end() + 60]
                    pytest.fail(f"{_where(path, index)}: a machine path in {around!r}")
                assert "Warning" not in text, f"{_where(path, index)}: a warning in the output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_each_opens_with_its_set_up_and_ends_with_what_it_showed(path: Path) -> None:
    cells = _cells(path)
    first_code = next(i for i, cell in enumerate(cells) if cell["cell_type"] == "code")
    assert first_code <= 1, f"{path.name}: the set-up cell comes first (after the title)"
    assert "set-up" in "".join(cells[first_code]["source"]).lower()
    assert cells[-1]["cell_type"] == "markdown", f"{path.name} ends with what it showed"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path: Path, tmp_path: Path, default_model) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    last = notebook.cells[-1]
    assert last.cell_type != "code" or last.get("outputs"), "the last cell produced nothing"
