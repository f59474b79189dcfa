"""Shared fixtures: tiny config-built models (fast tier) and the embedded model (slow)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fasb_lens.models import EmbeddedModelMissingError, embedded_model_file, load_model
from fasb_lens.testing import build_tiny_model_folder

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_folder("llama", tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_folder("gpt2", tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_folder: Path):
    return load_model(tiny_llama_folder, device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_folder: Path):
    return load_model(tiny_gpt2_folder, device="cpu")


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request: pytest.FixtureRequest):
    """Each tiny model in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def default_model():
    """The embedded SmolLM2-135M-Instruct (slow tier); skipped if it is not installed."""
    try:
        embedded_model_file()
    except EmbeddedModelMissingError as error:
        pytest.skip(f"embedded model not installed: {error}")
    return load_model(device="cpu")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder named by FASB_LENS_DATA; tests needing it skip without it."""
    value = os.environ.get("FASB_LENS_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("FASB_LENS_DATA not set or not a folder: real datasets unavailable")
    return Path(value)


@pytest.fixture(scope="session")
def tiny_anchoring(tiny_llama):
    """Heads anchored on 16 mini-set questions for the tiny Llama (4 heads of 16)."""
    from fasb_lens.anchoring import anchor_heads
    from fasb_lens.data import load_mini_truthfulqa
    from fasb_lens.splits import train_val_split

    questions = load_mini_truthfulqa()[:16]
    split = train_val_split([q.id for q in questions], seed=0)
    return anchor_heads(tiny_llama, questions, split, top_k=4, progress=False)


@contextmanager
def _small_searches(
    grids: dict[str, tuple[float, ...]],
    *,
    extensions: int = 1,
    quantiles: tuple[float, ...] = (0.3, 0.7),
) -> Iterator[None]:
    """Calibration with short searches: each named policy's start grid replaced for both
    tasks (its registration swapped for the block), fewer extensions and quantiles."""
    from fasb_lens.evaluation import search
    from fasb_lens.policies import POLICIES, StrengthSearch

    with ExitStack() as stack, pytest.MonkeyPatch.context() as patch:
        for name, grid in grids.items():
            spec = POLICIES.get(name)
            assert spec.search is not None
            short = StrengthSearch({"mc": grid, "generation": grid}, spec.search.threshold)
            stack.enter_context(POLICIES.replaced(replace(spec, search=short)))
        patch.setattr(search, "MAX_EXTENSIONS", extensions)
        patch.setattr(search, "THRESHOLD_QUANTILES", quantiles)
        yield


@pytest.fixture(scope="session")
def small_searches():
    """``small_searches(grids, extensions=, quantiles=)``: a context manager that makes
    calibration's searches short (see :func:`_small_searches`)."""
    return _small_searches
