"""fasb_lens: flexible activation steering with backtracking (FASB), inspectable.

Per-head truthfulness probes, anchored heads, steering vectors, token-by-token state
tracking and backtracking generation on TransformerLens 4's ``TransformerBridge``.
"""

__version__ = "0.1.0"

from fasb_lens._types import Head  # noqa: E402

__all__ = ["Head", "__version__"]
