"""The token view of a trace: segments, HTML, terminal text and the figure."""

from __future__ import annotations

import re

import pytest

from fasb_lens.generation import GenerationConfig, GenerationTrace, Step, generate
from fasb_lens.plotting import token_view
from fasb_lens.plotting.tokens import layout_rows
from fasb_lens.policies import FASB
from fasb_lens.trace_view import (
    TokenSegment,
    TriggerSegment,
    diverging_stops,
    p_true_rgb,
    token_segments,
    tokens_text,
    trace_html,
    trace_text,
    trace_views,
)

SGR = re.compile(r"\x1b\[[0-9;]*m")


def backtracked() -> GenerationTrace:
    """Six unsteered tokens, a trigger after the sixth that throws three away, then
    three steered tokens (one with a tag in it, one ending a line)."""
    texts = [" Old", " dogs", " can", " learn", " new", " tricks"]
    readings = [0.7, 0.65, 0.62, 0.55, 0.5, 0.41]
    steps = [
        Step(i, 100 + i, text, p, 0.0, checked=i >= 2, kept=i < 3)
        for i, (text, p) in enumerate(zip(texts, readings, strict=True))
    ]
    steps += [
        Step(6, 200, " learn", 0.58, 23.6),
        Step(7, 201, " <script>alert(1)</script>", 0.66, 23.6),
        Step(8, 202, ".\n", 0.8, 23.6),
    ]
    event = {"step": 5, "p_true": 0.41, "strength": 23.6, "kept_tokens": 3}
    return GenerationTrace(
        "Q", [1], [100, 101, 102, 200, 201, 202], "", "", "fasb", "cached", steps,
        trigger_step=5, trigger_p_true=0.41, strength=23.6,
        backtracks=[{**event, "discarded_ids": [103, 104, 105]}],
    )  # fmt: skip


def unsteered() -> GenerationTrace:
    texts, readings = [" Yes", " they", " can"], [0.55, None, 0.9]
    steps = [Step(i, i, t, p, 0.0) for i, (t, p) in enumerate(zip(texts, readings, strict=True))]
    return GenerationTrace("Q", [1], [0, 1, 2], "", "", "none", "cached", steps)


def test_segments_of_a_backtrack() -> None:
    segments = token_segments(backtracked())
    assert [type(s).__name__ for s in segments] == ["TokenSegment"] * 6 + ["TriggerSegment"] + [
        "TokenSegment"
    ] * 3
    tokens = [s for s in segments if isinstance(s, TokenSegment)]
    assert [t.kept for t in tokens] == [True] * 3 + [False] * 3 + [True] * 3
    assert [t.steered for t in tokens] == [False] * 6 + [True] * 3
    assert [t.checked for t in tokens][:6] == [False, False, True, True, True, True]
    trigger = segments[6]
    assert isinstance(trigger, TriggerSegment)
    assert (trigger.step, trigger.p_true, trigger.discarded, trigger.kept_tokens) == (5, 0.41, 3, 3)
    assert tokens[-1].shown == ".⏎"
    views = trace_views(backtracked(), unsteered())
    assert [v.label for v in views] == ["unsteered", "fasb"]
    assert views[0].summary == "not steered, lowest p_true 0.55"
    assert views[1].summary.startswith("triggered after step 5 (p_true 0.41), threw away 3")
    assert views[1].strength == pytest.approx(23.6)


def test_segments_without_a_trigger() -> None:
    segments = token_segments(unsteered())
    assert all(isinstance(s, TokenSegment) and s.kept and not s.steered for s in segments)
    assert [s.text for s in segments] == [" Yes", " they", " can"]
    assert tokens_text(segments) == " Yes they can"  # plain text: nothing to mark
    checked = unsteered()
    checked.steps[2].checked = True
    assert trace_views(checked)[0].summary == "no trigger in 1 check, lowest p_true 0.55"


def test_colours_diverge_around_the_centre() -> None:
    assert p_true_rgb(0.6, 0.6) == (247, 247, 247)
    assert p_true_rgb(0.0, 0.6) == (231, 111, 81) and p_true_rgb(1.0, 0.6) == (42, 157, 143)
    assert p_true_rgb(None) == (215, 215, 215)
    low, high = p_true_rgb(0.3, 0.6), p_true_rgb(0.8, 0.6)
    assert low[0] > low[2] and high[2] > high[0]  # orange below, teal above
    assert p_true_rgb(0.55, 0.6)[2] < 225  # near the threshold still visibly tinted
    stops = diverging_stops(0.6)
    assert len(stops) == 21 and stops[0] == (0.0, "rgb(231,111,81)")
    assert stops[12] == (0.6, "rgb(247,247,247)") and stops[-1] == (1.0, "rgb(42,157,143)")


def test_html_escapes_and_marks() -> None:
    page = trace_html(backtracked(), unsteered=unsteered(), threshold=0.6)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("text-decoration:line-through") == 3 + 1  # three tokens, the legend
    assert page.count(f"box-shadow:inset 0 -3px 0 {'#264653'}") == 3 + 1
    assert "↺ p=0.41" in page and "steered at strength 23.60" in page
    assert "threshold 0.60" in page and "rgb(247,247,247) 60%" in page  # the legend's scale
    assert "⏎\n" in page  # newline made visible, and still a line break
    assert 'title="step 7\ntoken &#x27; &lt;script&gt;' in page  # the tooltip, escaped too
    assert page.index("unsteered") < page.index("<b>fasb</b>")
    assert "<script" not in page.replace("&lt;script", "")
    assert backtracked()._repr_html_() == trace_html(backtracked())


def test_terminal_text_is_coloured_only_when_asked() -> None:
    plain = trace_text(backtracked(), unsteered=unsteered(), threshold=0.6)
    assert not SGR.search(plain)
    lines = plain.splitlines()
    assert lines[1] == " Yes they can"
    assert lines[3] == " Old dogs can[- learn new tricks-]|trigger p=0.41|" + (
        "{ learn <script>alert(1)</script>.⏎}"
    )
    assert lines[4].startswith("legend: [-discarded-]")
    for palette in ("truecolor", "256", True):
        coloured = trace_text(backtracked(), threshold=0.6, color=palette)
        assert SGR.search(coloured)
        tokens = SGR.sub("", coloured.splitlines()[1])
        assert (
            tokens == " Old dogs can learn new tricks ↺ p=0.41  learn <script>alert(1)</script>.⏎"
        )
    truecolor = trace_text(backtracked(), threshold=0.6, color="truecolor")
    discarded, steered = (";".join(map(str, p_true_rgb(p, 0.6))) for p in (0.55, 0.58))
    assert f"\x1b[30;48;2;{discarded};2;9m learn\x1b[0m" in truecolor  # dim, struck through
    assert f"\x1b[30;48;2;{steered};4m learn\x1b[0m" in truecolor  # steered: underlined
    in_256 = trace_text(backtracked(), color="256")  # the legend's scale runs 0 to 1
    assert "48;5;202m 0.00" in in_256 and "48;5;231m 0.50" in in_256 and "48;5;37m 1.00" in in_256


def test_figure_draws_a_box_per_token() -> None:
    figure = token_view(backtracked(), unsteered=unsteered(), threshold=0.6)
    shapes = figure.layout.shapes
    names = [shape.name for shape in shapes]
    assert names.count("token") == 9 + 3 and names.count("trigger") == 1
    assert names.count("strike") == 3
    outlined = [s for s in shapes if s.name == "token" and s.line.width == 2]
    assert len(outlined) == 3
    unsteered_text, steered_text, trigger_text, bar = figure.data
    assert len(unsteered_text.text) == 3 and len(steered_text.text) == 9
    assert "&lt;script&gt;" in steered_text.text[7] and "<script>" not in str(figure.data)
    assert trigger_text.text == ("↺\u00a0p=0.41",)
    assert bar.marker.showscale and bar.marker.colorscale[12] == (0.6, "rgb(247,247,247)")
    notes = [note.text for note in figure.layout.annotations]
    assert len(notes) == 3 and notes[0].startswith("<b>unsteered</b>")
    assert "struck through" in notes[2] and "strength up to 23.60" in notes[2]
    assert figure.layout.height > 0 and figure.layout.width == 1100
    no_trigger = token_view(unsteered())
    assert len(no_trigger.layout.shapes) == 3 and len(no_trigger.layout.annotations) == 1


def test_boxes_wrap_into_lines() -> None:
    views = trace_views(backtracked())
    headers, placed, n_rows = layout_rows(views, line_chars=20)
    assert headers[0][0] == 0 and placed[0].row == 1
    assert all(box.x1 <= 20 or box.x0 == 0 for box in placed)
    assert len({box.row for box in placed}) > 1
    assert n_rows == placed[-1].row + 2  # its newline ends the line, then one blank row


def test_a_generated_backtrack(tiny_llama, tiny_anchoring) -> None:
    """Segments read off a real generation: the trigger at the first check, every token
    before it thrown away, every token after it steered."""
    steering = tiny_anchoring.steering
    config = GenerationConfig(max_new_tokens=6, stop_at_eos=False)
    policy = FASB(alpha=4.0, threshold=1.1, backtrack_tokens=2)
    trace = generate(tiny_llama, "Q: Are bats blind? A:", steering=steering, policy=policy,
                     config=config)[0]  # fmt: skip
    segments = token_segments(trace)
    trigger = segments[2]
    assert isinstance(trigger, TriggerSegment) and trigger.discarded == 2
    tokens = [s for s in segments if isinstance(s, TokenSegment)]
    assert len(tokens) == 8 and [t.kept for t in tokens] == [False] * 2 + [True] * 6
    assert [t.steered for t in tokens] == [False] * 2 + [True] * 6
    assert "|trigger p=" in trace_text(trace)
    assert trace._repr_html_().count("line-through") == 2 + 1
