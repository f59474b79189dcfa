"""fasb_lens: flexible activation steering with backtracking (FASB), inspectable.

Per-head truthfulness probes, anchored heads, steering vectors, token-by-token state
tracking and backtracking generation on TransformerLens 4's ``TransformerBridge``.

The names a notebook needs are importable from here (``from fasb_lens import ...``);
they load on first use, so ``import fasb_lens`` itself is instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Head": "fasb_lens._types",
    "load_model": "fasb_lens.models",
    "model_shape": "fasb_lens.models",
    "load_truthfulqa": "fasb_lens.data",
    "load_mini_truthfulqa": "fasb_lens.data",
    "load_prompt_format": "fasb_lens.data",
    "probing_prompts": "fasb_lens.data",
    "authors_folds": "fasb_lens.splits",
    "authors_question_order": "fasb_lens.splits",
    "collect_head_activations": "fasb_lens.activations",
    "HeadActivations": "fasb_lens.activations",
    "fit_head_probes": "fasb_lens.probes",
    "HeadProbes": "fasb_lens.probes",
    "Steering": "fasb_lens.steering",
    "anchor_heads": "fasb_lens.anchoring",
    "build_steering": "fasb_lens.anchoring",
    "Unsteered": "fasb_lens.policies",
    "ITI": "fasb_lens.policies",
    "FASB": "fasb_lens.policies",
    "CAA": "fasb_lens.policies",
    "make_policy": "fasb_lens.policies",
    "GenerationConfig": "fasb_lens.generation",
    "generate": "fasb_lens.generation",
    "PrefixScorer": "fasb_lens.scoring",
    "head_heatmap": "fasb_lens.plotting",
    "trajectories": "fasb_lens.plotting",
    "token_view": "fasb_lens.plotting",
    "trace_html": "fasb_lens.trace_view",
    "trace_text": "fasb_lens.trace_view",
    "p_true_distributions": "fasb_lens.plotting",
    "save_figure": "fasb_lens.plotting",
    "keep_freed_memory": "fasb_lens.allocator",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fasb_lens' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
