"""What every benchmark entry may use: the model, the data, sizes, a timer."""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.activations import HeadActivations, collect_head_activations
from fasb_lens.data import (
    LabelledPrompt,
    TruthfulQAQuestion,
    load_mini_truthfulqa,
    load_truthfulqa,
    probing_prompts,
    truthfulqa_prompt_format,
)
from fasb_lens.models import (
    cache_root,
    model_id,
)
from fasb_lens.options import AT_LEAST_ONE, Bounds, option
from fasb_lens.splits import authors_question_order


@dataclass(frozen=True)
class BenchSettings:
    """The sizes of the benchmark entries (``fasb-lens bench`` options); every default is
    written here once."""

    n_prompts: int = option(1000, help="probing prompts of `activations`", bounds=AT_LEAST_ONE)
    batch_size: int = option(32, help="prompts per forward of `activations`", bounds=AT_LEAST_ONE)
    mc_questions: int = option(50, help="questions for `mc`", bounds=AT_LEAST_ONE)
    ablation_questions: int = option(20, help="questions for `ablation`", bounds=AT_LEAST_ONE)
    reproduce_questions: int = option(
        40,
        help="questions of the `reproduce` subset (its time is extrapolated to the dataset)",
        bounds=Bounds(minimum=4),
    )
    reproduce_out: str | None = option(
        None, help="keep the `reproduce` entry's run in this new folder (default: a temporary one)"
    )
    loop_heads: int = 3


@dataclass
class BenchContext:
    """What every benchmark entry may use: the model, the data folder, the sizes (read as
    attributes: ``ctx.n_prompts`` is ``ctx.settings.n_prompts``)."""

    model: TransformerBridge
    data_dir: Path | None
    settings: BenchSettings = field(default_factory=BenchSettings)
    progress: bool = True
    notes: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        if name == "settings":
            raise AttributeError(name)
        return getattr(self.settings, name)

    def questions(self) -> tuple[str, list[TruthfulQAQuestion]]:
        """TruthfulQA with its MC order if the data folder has it, else the mini set."""
        folder = self.data_dir / "truthfulqa" if self.data_dir else None
        if folder is not None and (folder / "TruthfulQA.csv").is_file():
            return "TruthfulQA", load_truthfulqa(folder)
        note = "TruthfulQA not found: set FASB_LENS_DATA; used the mini set"
        if note not in self.notes:
            self.notes.append(note)
        return "mini (TruthfulQA not found)", load_mini_truthfulqa()

    def probing_prompts(self) -> tuple[str, list[LabelledPrompt]]:
        """The first ``n_prompts`` probing prompts (repeated if the data has fewer)."""
        name, questions = self.questions()
        prompts = probing_prompts(questions)
        while len(prompts) < self.n_prompts:
            prompts = prompts + prompts
        return name, prompts[: self.n_prompts]

    def all_probing_activations(self) -> tuple[str, list[str], HeadActivations]:
        """Activations of every probing prompt, kept in the cache between runs."""
        name, questions = self.questions()
        key = hashlib.sha256(f"{model_id(self.model)}|{name}".encode()).hexdigest()[:16]
        activations = collect_head_activations(
            self.model,
            probing_prompts(questions),
            batch_size=self.batch_size,
            out_dir=cache_root() / "bench" / f"probing-{key}",
            progress=self.progress,
        )
        return name, authors_question_order(questions), activations


@contextmanager
def _timer(results: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    results[key] = round(time.perf_counter() - start, 3)


def _prompt_format(ctx: BenchContext):
    """The evaluation prompt of the questions :meth:`BenchContext.questions` reads, as
    ``reproduce`` builds it for them."""
    folder = ctx.data_dir / "truthfulqa" if ctx.data_dir else None
    if folder is not None and (folder / "TruthfulQA.csv").is_file():
        return truthfulqa_prompt_format(folder)
    return truthfulqa_prompt_format("mini")


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
