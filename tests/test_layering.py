"""The package's five tiers: a module imports only from its own tier or the tiers below.

``docs/architecture.md`` describes the tiers; this test holds the code to them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fasb_lens"

TIERS: dict[str, tuple[str, ...]] = {
    "core": (
        "fasb_lens._types",
        "fasb_lens.options",
        "fasb_lens.registry",
        "fasb_lens.profiling",
        "fasb_lens.storage",
        "fasb_lens.allocator",
        "fasb_lens.data",
        "fasb_lens.splits",
        "fasb_lens.models",
        "fasb_lens.testing",
        "fasb_lens.interventions",
        "fasb_lens.distributed",
    ),
    "runtime": (
        "fasb_lens.decisions",
        "fasb_lens.trace_view",
        "fasb_lens.traces",
        "fasb_lens.prefix",
        "fasb_lens.trees",
        "fasb_lens.logprobs",
        "fasb_lens.tree_forward",
        "fasb_lens.decoding",
        "fasb_lens.generation",
        "fasb_lens.policy_walk",
        "fasb_lens.scoring",
    ),
    "method": (
        "fasb_lens.activations",
        "fasb_lens.trackers",
        "fasb_lens.probes",
        "fasb_lens.probe_solvers",
        "fasb_lens.policies",
        "fasb_lens.steering",
        "fasb_lens.anchoring",
        "fasb_lens.multiple_choice",
        "fasb_lens.ablation",
    ),
    "experiments": ("fasb_lens.evaluation",),
    "interfaces": (
        "fasb_lens.plotting",
        "fasb_lens.run_figures",
        "fasb_lens.demo",
        "fasb_lens.bench",
        "fasb_lens.commands",
        "fasb_lens.cli",
    ),
}
"""Bottom to top; a name covers its sub-modules (``fasb_lens.data`` is ``data/``)."""
ORDER = list(TIERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tier_of(module: str) -> str | None:
    """The tier of ``module``: the one listing the longest prefix of its name."""
    found = [
        (len(name), tier)
        for tier, names in TIERS.items()
        for name in names
        if module == name or module.startswith(name + ".")
    ]
    return max(found)[1] if found else None


def imported_modules(path: Path) -> set[str]:
    """Every fasb_lens module ``path`` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from fasb_lens import storage`` imports the sub-module
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("fasb_lens.") and tier_of(name) is not None}


# the package's own __init__ loads names lazily, across tiers, for notebooks
MODULES = sorted(path for path in PACKAGE.rglob("*.py") if module_name(path) != "fasb_lens")


def test_every_module_has_a_tier() -> None:
    missing = [module_name(path) for path in MODULES if tier_of(module_name(path)) is None]
    assert not missing, f"add these modules to TIERS (and docs/architecture.md): {missing}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_follow_the_tiers(path: Path) -> None:
    module = module_name(path)
    own = ORDER.index(tier_of(module))  # type: ignore[arg-type]
    above = {
        name: tier_of(name)
        for name in imported_modules(path)
        if ORDER.index(tier_of(name)) > own  # type: ignore[arg-type]
    }
    assert not above, f"{module} ({ORDER[own]}) imports from a tier above: {above}"


def test_the_architecture_page_names_every_tier_and_package() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    for tier, names in TIERS.items():
        assert re.search(rf"\b{tier}\b", page), tier
        for name in names:
            short = name.removeprefix("fasb_lens.")
            assert short in page, f"docs/architecture.md does not mention {short} ({tier})"
