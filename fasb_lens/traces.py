"""What generating one prompt did, step by step: the record both drivers' users read.

A :class:`GenerationTrace` holds the prompt and its continuation, every decoding
:class:`Step` (the token chosen, the tracker's reading it was chosen from, the strength
applied, whether it was a check and whether it was kept or thrown away by a backtrack),
the backtracks, the answer extracted from the text, and the timings. It converts to and
from JSON (the run records keep it whole) and shows itself token by token in Jupyter
(:mod:`fasb_lens.trace_view`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from fasb_lens.trace_view import trace_html

QA_STOP = "Q:"
"""Where a QA-format answer ends: the next question."""


@dataclass
class Step:
    """One decoding step of one prompt.

    ``p_true`` is the tracker's reading at the position fed in this step (the prompt's
    last token at step 0, then the previous token), i.e. the state from which ``token``
    was chosen. ``strength`` is the steering applied to that position.
    """

    step: int
    token_id: int
    token: str
    p_true: float | None
    strength: float
    checked: bool = False
    kept: bool = True


@dataclass
class GenerationTrace:
    """What happened while generating one prompt, for reading, plotting and JSON."""

    prompt: str
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    answer: str
    policy: str
    mode: str
    steps: list[Step] = field(default_factory=list)
    trigger_step: int | None = None
    trigger_p_true: float | None = None
    strength: float = 0.0
    backtracks: list[dict[str, Any]] = field(default_factory=list)
    discarded_ids: list[int] = field(default_factory=list)
    discarded_text: str = ""
    stop_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    tracker: str | None = None
    """The tracker that read ``p_true`` (``None``: none read)."""
    reused: bool = False
    """Read off the unsteered generation (:func:`replay`) instead of generated again."""

    @property
    def triggered(self) -> bool:
        return self.trigger_step is not None

    @property
    def p_true(self) -> list[float | None]:
        """The tracker's reading at every step, discarded steps included."""
        return [step.p_true for step in self.steps]

    def to_dict(self, *, prompt: bool = True) -> dict[str, Any]:
        """Everything as JSON-ready data; ``prompt=False`` leaves the prompt out."""
        data = asdict(self)
        if not prompt:
            del data["prompt"], data["prompt_ids"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def _repr_html_(self) -> str:
        """Jupyter shows a trace token by token (:func:`fasb_lens.trace_view.trace_html`)."""
        return trace_html(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationTrace:
        steps = [Step(**step) for step in data.get("steps", [])]
        return cls(**{"prompt": "", "prompt_ids": [], **data, "steps": steps})


def extract_answer(text: str) -> str:
    """The answer in a QA-format continuation, as the paper extracts it.

    Everything from the next ``"Q:"`` on is cut; the rest after the first ``"A:"`` is kept.
    """
    answer = text.strip().split(QA_STOP)[0].strip()
    if "A:" in answer:
        answer = answer.split("A:")[1].strip()
    return answer
