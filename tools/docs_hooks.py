"""MkDocs hooks that build the pages of the docs site that come from the code.

Nothing here needs the network, a model or a GPU:

* **the CLI reference** (``cli.md``): every sub-command's ``--help`` exactly as
  ``fasb_lens.cli`` builds it, and a table of each option's default;
* **the API reference** (``api/``): one page per module or package of the tier table in
  ``docs/architecture.md`` (the table ``tests/test_layering.py`` holds the code to), each a
  mkdocstrings directive, grouped by tier in the navigation;
* **the notebooks** (``notebooks/``): the committed notebooks with their outputs, not
  executed; plotly figures, which nbconvert cannot draw, become HTML that loads the
  plotly.js of the installed plotly package (``assets/plotly.min.js``);
* **the figures** (``figures/*.png``), so that pages show the same images as the README.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
API_INDEX = "api/index.md"
PLOTLY_JS = "assets/plotly.min.js"
HELP_WIDTH = "88"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
# packages documented elsewhere: the command modules are what the CLI reference shows
NOT_IN_API = {"commands"}
TIER_ROW = re.compile(r"^\|\s*\*\*(\w+)\*\*\s*\|.*\|(?P<modules>[^|]*)\|\s*$")


# --- the tier table -------------------------------------------------------------------


def tiers() -> dict[str, list[str]]:
    """``{tier: [module or package, ...]}`` from the table of ``docs/architecture.md``,
    bottom tier first (the table lists the top one first)."""
    found: dict[str, list[str]] = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = TIER_ROW.match(line)
        if match:
            names = re.findall(r"`([\w/]+)`", match.group("modules"))
            found[match.group(1)] = [name.rstrip("/") for name in names]
    if not found:
        raise RuntimeError("docs/architecture.md has no tier table to build the API pages from")
    return dict(reversed(found.items()))


def api_pages() -> dict[str, dict[str, str]]:
    """``{tier: {module: page}}`` for every documented module."""
    return {
        tier: {
            name: f"api/{name.lstrip('_') or name}.md" for name in names if name not in NOT_IN_API
        }
        for tier, names in tiers().items()
    }


def api_page(name: str, tier: str) -> str:
    module = f"fasb_lens.{name}"
    package = (ROOT / "fasb_lens" / name / "__init__.py").is_file()
    lines = [
        f"# `{module}`",
        "",
        f"*{tier} tier* ([architecture](../architecture.md)).",
        "",
        f"::: {module}",
    ]
    if package:
        lines += ["    options:", "      show_submodules: true"]
    return "\n".join(lines) + "\n"


def api_index() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings, one page per module or package, in the tiers of the",
        "[architecture](../architecture.md) (a module imports only from its own tier or those",
        "below). The names most notebooks need are importable from `fasb_lens` itself:",
        "`from fasb_lens import load_model, anchor_heads, FASB, generate, ...`. The",
        "command modules (`fasb_lens.commands`) are described by the",
        "[command-line reference](../cli.md).",
        "",
    ]
    for tier, pages in reversed(api_pages().items()):
        lines.append(
            f"- **{tier}**: "
            + ", ".join(f"[`{name}`]({Path(page).name})" for name, page in pages.items())
        )
    return "\n".join(lines) + "\n"


# --- the command line -----------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return {
                name: sub
                for name, sub in action.choices.items()
                if sub.prog.endswith(" " + name)  # aliases point at the same parser
            }
    return {}


def _default(action: argparse.Action) -> str | None:
    """An option's default as the page shows it (``None``: nothing worth showing)."""
    if action.required or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
        return None
    if isinstance(action.default, list | tuple):  # empty: the help says what it means
        return " ".join(str(value) for value in action.default) or None
    return str(action.default)


def _defaults_table(actions: list[argparse.Action]) -> list[str]:
    rows = [
        f"| {', '.join(f'`{flag}`' for flag in action.option_strings)} | `{_default(action)}` |"
        for action in actions
        if action.option_strings and _default(action) is not None
    ]
    return ["| option | default |", "|---|---|", *rows, ""] if rows else []


# Commands whose parser leaves some defaults unset on purpose (``add_options(...,
# only_given=True)``), so that a value not given comes from somewhere else.
UNSET_DEFAULTS = {
    "reproduce": (
        "the settings file given with `--config`, else the defaults of its settings "
        "(`fasb_lens.evaluation.config.ExperimentConfig`)",
        "fasb_lens.evaluation.config:ExperimentConfig",
    ),
    "generate": (
        "the artifact's stored `defaults` (`fit` writes the paper's 60 / 0.6 / 10 unless "
        "told otherwise)",
        None,
    ),
}


def _settings_defaults(target: str) -> list[argparse.Action]:
    """The options of a settings class with their defaults, as a parser built without
    ``only_given`` would have them."""
    import importlib

    from fasb_lens.options import add_options

    module, name = target.split(":")
    parser = argparse.ArgumentParser(add_help=False)
    add_options(parser, getattr(importlib.import_module(module), name))
    return parser._actions


def command_section(name: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `fasb-lens {name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    lines += _defaults_table(parser._actions)
    unset = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and action.default is argparse.SUPPRESS and action.nargs != 0
    ]
    unset = [flag for flag in unset if flag not in ("-h", "--help")]
    if unset:
        source, settings = UNSET_DEFAULTS.get(name, ("the command's settings", None))
        flags = ", ".join(f"`{flag}`" for flag in unset)
        lines += [f"Not given, {flags} take their value from {source}.", ""]
        if settings is not None:
            wanted = set(unset)
            actions = [
                action
                for action in _settings_defaults(settings)
                if action.option_strings and action.option_strings[0] in wanted
            ]
            if actions:
                lines += ["Those defaults:", "", *_defaults_table(actions)]
    return lines


def cli_page() -> str:
    from fasb_lens import cli

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps to the terminal's width
    try:
        parser = cli.build_parser()
        lines = [
            "# Command-line reference",
            "",
            "Generated from `fasb_lens.cli`'s parser when the site is built: each section is",
            "the command's `--help`, then the defaults of its options. Options that accept",
            "several values take them as `a b` or `a,b`. Errors are one line",
            "(`fasb-lens: error: ...`, exit status 2); `-v` shows the traceback",
            "([troubleshooting](troubleshooting.md)).",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
        for name, sub in _subcommands(parser).items():
            lines += command_section(name, sub)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(lines)


# --- notebooks ------------------------------------------------------------------------


def _plotly_html(figure: dict[str, Any], script: str | None) -> str:
    import plotly.io

    html = plotly.io.to_html(figure, include_plotlyjs=False, full_html=False)
    return (f'<script src="{script}"></script>\n' if script else "") + html


def notebook_for_site(source: Path, target: Path, plotly_src: str) -> None:
    """Copy a notebook, its plotly outputs turned into HTML (the first one loads plotly.js)."""
    notebook = json.loads(source.read_text())
    script: str | None = plotly_src
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                output["data"] = {"text/html": _plotly_html(data[PLOTLY_MIME], script)}
                script = None
    target.write_text(json.dumps(notebook))


# --- mkdocs events --------------------------------------------------------------------

_scratch: tempfile.TemporaryDirectory[str] | None = None


def on_config(config: Any) -> Any:
    """Expand the navigation's API entry into one section per tier."""

    def expand(items: list[Any]) -> list[Any]:
        result = []
        for item in items:
            if isinstance(item, dict):
                ((title, value),) = item.items()
                if value == API_INDEX:
                    value = [{"Overview": API_INDEX}] + [
                        {tier: [{name: page} for name, page in pages.items()]}
                        for tier, pages in reversed(api_pages().items())
                    ]
                elif isinstance(value, list):
                    value = expand(value)
                item = {title: value}
            result.append(item)
        return result

    if config.nav:
        config.nav = expand(config.nav)
    return config


@event_priority(50)  # before mkdocs-jupyter looks for notebooks among the files
def on_files(files: Files, config: Any) -> Files:
    global _scratch
    _scratch = tempfile.TemporaryDirectory(prefix="fasb_lens_docs_")
    scratch = Path(_scratch.name)

    def add(src_uri: str, **source: Any) -> None:
        files.append(File.generated(config, src_uri, **source))

    add("cli.md", content=cli_page())
    add(API_INDEX, content=api_index())
    for tier, pages in api_pages().items():
        for name, page in pages.items():
            add(page, content=api_page(name, tier))
    for png in sorted((ROOT / "figures").glob("*.png")):
        add(f"figures/{png.name}", abs_src_path=str(png))

    import plotly.offline

    add(PLOTLY_JS, content=plotly.offline.get_plotlyjs())
    depth = 2 if config.use_directory_urls else 1  # notebooks/NAME/ or notebooks/NAME.html
    plotly_src = "../" * depth + PLOTLY_JS
    (scratch / "notebooks").mkdir()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        src_uri = f"notebooks/{notebook.name}"
        notebook_for_site(notebook, scratch / src_uri, plotly_src)
        # a file of its own folder, not a generated one: mkdocs-jupyter reads its path
        files.append(File(src_uri, str(scratch), config.site_dir, config.use_directory_urls))
    return files


def on_post_build(config: Any) -> None:
    global _scratch
    if _scratch is not None:
        _scratch.cleanup()
        _scratch = None
