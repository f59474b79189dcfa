"""The profile of a run: nested sections with their time, calls, forwards and positions."""

from __future__ import annotations

import torch

from fasb_lens.models import forward
from fasb_lens.profiling import Profile, count_forward, profiling, section


def test_sections_nest_and_count_forwards(tiny_llama) -> None:
    profile = Profile()
    with section("ignored"):  # no profile active: nothing is recorded
        count_forward(5)
    with profiling(profile):
        with section("outer"):
            for _ in range(2):
                with section("inner"), torch.inference_mode():
                    forward(tiny_llama, torch.tensor([[1, 2, 3], [4, 5, 6]]))
            count_forward(7)
    sections = profile.to_dict()
    assert list(sections) == ["outer", "outer/inner"]
    assert sections["outer/inner"]["calls"] == 2 and sections["outer/inner"]["forwards"] == 2
    assert sections["outer/inner"]["positions"] == 2 * 6  # batch x length, per forward
    assert sections["outer"]["forwards"] == 3 and sections["outer"]["positions"] == 19
    assert sections["outer"]["seconds"] >= sections["outer/inner"]["seconds"]
    report = profile.report(min_seconds=0)
    assert "  inner x2" in report and report.splitlines()[1].startswith("outer")


def test_a_slash_in_a_name_does_not_nest() -> None:
    profile = Profile()
    with profiling(profile), section("generation"), section("fasb_random/0"):
        pass
    assert list(profile.to_dict()) == ["generation", "generation/fasb_random:0"]
    assert profile.report(min_seconds=0).splitlines()[-1].startswith("  fasb_random:0")
