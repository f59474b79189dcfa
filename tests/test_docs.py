"""The documentation: the site builds with no warning, and the README's links resolve.

``mkdocs build --strict`` fails on any warning: a broken link or ``#anchor``, a page
missing from the navigation, a docstring mkdocstrings cannot render. The site's generated
pages (command line, API, notebooks) come from ``tools/docs_hooks.py``; nothing needs the
network. MkDocs comes with the ``docs`` extra, which ``dev`` includes.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mkdocs() -> str:
    beside = Path(sys.executable).with_name("mkdocs")
    if not beside.is_file():
        pytest.fail('mkdocs is not installed: pip install -e ".[docs]" (or ".[dev]")')
    return str(beside)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_site_builds_strict_without_warnings(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [_mkdocs(), "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    assert (site / "cli" / "index.html").is_file()
    assert (site / "api" / "models" / "index.html").is_file()
    notebook = (site / "notebooks" / "01_heads_anchoring" / "index.html").read_text()
    assert "Plotly.newPlot" in notebook  # the stored figures are drawn, not dropped
    assert (site / "assets" / "plotly.min.js").is_file()


def test_the_cli_reference_has_every_command() -> None:
    pytest.importorskip("mkdocs", reason="the docs hooks import mkdocs (the docs extra)")
    from fasb_lens.cli import COMMANDS

    page = _hooks().cli_page()
    for command in COMMANDS:
        assert f"## `fasb-lens {command.name}`" in page, command.name


def test_the_api_pages_cover_every_tier_of_the_architecture() -> None:
    pytest.importorskip("mkdocs", reason="the docs hooks import mkdocs (the docs extra)")
    pages = _hooks().api_pages()
    assert list(pages) == ["core", "runtime", "method", "experiments", "interfaces"]
    documented = {name for tier in pages.values() for name in tier}
    for name in ("models", "generation", "policies", "evaluation", "plotting", "_types"):
        assert name in documented, name


def test_readme_links_point_at_files_that_exist() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [target for target in targets if "://" not in target]
    assert local, "the README links to no page of the docs"
    missing = [target for target in local if not (ROOT / target).exists()]
    assert not missing, f"README links to missing files: {missing}"
