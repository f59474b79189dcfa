"""A figure shown in Jupyter carries its PNG in the same output (no browser needed here)."""

from __future__ import annotations

import base64
import logging

import pytest

from fasb_lens.plotting import common, display, p_true_distributions, save_figure, show
from fasb_lens.plotting.display import PLOTLY_MIME, PNG_MIME, figure_bundle

FAKE_PNG = b"\x89PNG\r\n\x1a\nnot really an image"


def test_the_bundle_holds_the_figure_and_its_png(monkeypatch) -> None:
    sizes = []

    def fake_png(figure, *, scale):
        sizes.append(scale)
        return FAKE_PNG

    monkeypatch.setattr(display, "to_png", fake_png)
    figure = p_true_distributions([0.4, 0.5], [0.6], threshold=0.5)
    bundle = figure_bundle(figure, scale=2.0)
    assert bundle[PLOTLY_MIME]["data"][0]["type"] == "histogram"
    assert base64.b64decode(bundle[PNG_MIME]) == FAKE_PNG
    assert sizes == [2.0]
    assert "p_true" in bundle["text/plain"]


def test_without_a_renderer_the_figure_stays_and_a_warning_says_why(monkeypatch, caplog) -> None:
    def no_browser(figure, *, scale):
        raise RuntimeError("no Chrome")

    monkeypatch.setattr(display, "to_png", no_browser)
    monkeypatch.setattr(common, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger=common.__name__):
        bundle = figure_bundle(p_true_distributions([0.4], [0.6]))
        assert PLOTLY_MIME in bundle and PNG_MIME not in bundle
        assert "kaleido" in caplog.text
        caplog.clear()
        figure_bundle(p_true_distributions([0.4], [0.6]))  # said once, not per figure
        assert caplog.text == ""


def test_a_folder_of_figures_without_kaleido_warns_once(monkeypatch, caplog, tmp_path) -> None:
    def no_kaleido(figure, *, scale):
        raise ImportError("kaleido")

    monkeypatch.setattr(common, "to_png", no_kaleido)
    monkeypatch.setattr(common, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger=common.__name__):
        for name in ("a", "b", "c"):
            written = save_figure(p_true_distributions([0.4], [0.6]), tmp_path / name)
            assert [path.suffix for path in written] == [".html"]
    assert len(caplog.records) == 1 and "HTML only" in caplog.text


def test_png_false_renders_nothing(monkeypatch) -> None:
    monkeypatch.setattr(display, "to_png", pytest.fail)
    assert PNG_MIME not in figure_bundle(p_true_distributions([0.4], [0.6]), png=False)


def test_show_displays_one_raw_output(monkeypatch) -> None:
    ipython_display = pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr(display, "to_png", lambda figure, *, scale: FAKE_PNG)
    monkeypatch.setattr(ipython_display, "display", lambda *a, **k: shown.append((a, k)))
    show(p_true_distributions([0.4], [0.6]))
    [(args, kwargs)] = shown
    assert kwargs == {"raw": True}
    assert {PLOTLY_MIME, PNG_MIME} <= set(args[0])
