"""The package's layers: a module imports only from the layers above it in ``LAYERS``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fasb_lens"

LAYERS: list[tuple[str, ...]] = [
    ("fasb_lens._types", "fasb_lens.options", "fasb_lens.storage", "fasb_lens.allocator"),
    ("fasb_lens.data",),
    ("fasb_lens.splits",),
    ("fasb_lens.models",),
    ("fasb_lens.testing",),
    ("fasb_lens.interventions",),
    ("fasb_lens.prefix", "fasb_lens.trees"),
    ("fasb_lens.logprobs",),
    ("fasb_lens.tree_forward",),
    ("fasb_lens.activations",),
    ("fasb_lens.trackers",),
    ("fasb_lens.probes",),
    ("fasb_lens.steering",),
    ("fasb_lens.anchoring",),
    ("fasb_lens.policies",),
    ("fasb_lens.decoding",),
    ("fasb_lens.generation",),
    ("fasb_lens.policy_walk",),
    ("fasb_lens.scoring",),
    ("fasb_lens.evaluation.judges",),
    ("fasb_lens.evaluation.truthfulqa",),
    ("fasb_lens.evaluation.search",),
    ("fasb_lens.evaluation.calibration",),
    ("fasb_lens.evaluation.config",),
    ("fasb_lens.evaluation.summary",),
    ("fasb_lens.evaluation.records",),
    ("fasb_lens.evaluation.methods",),
    ("fasb_lens.evaluation.experiment", "fasb_lens.evaluation.mc_suite"),
    ("fasb_lens.plotting",),
    ("fasb_lens.run_figures",),
    ("fasb_lens.ablation",),
    ("fasb_lens.demo",),
    ("fasb_lens.bench",),
    ("fasb_lens.commands",),
    ("fasb_lens.cli",),
]
"""Top to bottom; a package (``fasb_lens.data``) is one layer with its sub-modules."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def root_of(module: str) -> tuple[int, str] | None:
    """The layer of ``module`` and the name it is listed under."""
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                return index, name
    return None


def layer_of(module: str) -> int | None:
    found = root_of(module)
    return None if found is None else found[0]


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
    return {name for name in found if name.startswith("fasb_lens.") and layer_of(name) is not None}


def imports_anything(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(tree))


# the package's own __init__ loads names lazily; empty package __init__ files are no layer
MODULES = sorted(
    path
    for path in PACKAGE.rglob("*.py")
    if module_name(path) != "fasb_lens" and (path.name != "__init__.py" or imports_anything(path))
)


def test_every_module_has_a_layer() -> None:
    missing = [module_name(path) for path in MODULES if layer_of(module_name(path)) is None]
    assert not missing, f"add these modules to LAYERS (and to the README's architecture): {missing}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_follow_the_layers(path: Path) -> None:
    module = module_name(path)
    own = root_of(module)
    assert own is not None
    # a module may import from earlier layers, and from its own package
    wrong = [
        name for name in imported_modules(path) if not root_of(name) < own and root_of(name) != own
    ]
    assert not wrong, f"{module} (layer {own[0]}) imports from its layer or below: {sorted(wrong)}"
