"""Figures in Jupyter with a static copy: one output holding the interactive figure and a PNG.

A notebook saved with plotly's own output (``application/vnd.plotly.v1+json``) shows
nothing where plotly.js does not run: a repository host's notebook preview, nbconvert's
HTML, the documentation site. :func:`show` displays a figure as one output that carries
both the interactive figure and a PNG of it, rendered by kaleido as
:func:`~fasb_lens.plotting.save_figure` renders its PNGs; Jupyter draws the interactive
figure, every other viewer the image. Without kaleido or a Chrome/Chromium for it to drive,
the output holds the interactive figure alone and a warning says what to install.
"""

from __future__ import annotations

import base64
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from fasb_lens.plotting.common import no_png, to_png

PLOTLY_MIME = "application/vnd.plotly.v1+json"
PNG_MIME = "image/png"


def figure_bundle(figure: go.Figure, *, png: bool = True, scale: float = 1.0) -> dict[str, Any]:
    """The MIME bundle :func:`show` displays: plotly's JSON (what Jupyter draws
    interactively), ``image/png`` (base64; when ``png`` and kaleido can render it, at
    ``scale`` times the figure's size) and a line of plain text naming the figure."""
    bundle: dict[str, Any] = dict(pio.renderers["plotly_mimetype"].to_mimebundle(figure.to_dict()))
    title = figure.layout.title.text if figure.layout.title else None
    bundle["text/plain"] = f"<plotly figure: {title}>" if title else "<plotly figure>"
    if png:
        try:
            bundle[PNG_MIME] = base64.b64encode(to_png(figure, scale=scale)).decode("ascii")
        except Exception as error:  # kaleido missing, or no browser for it to drive
            no_png(title or "the figure", error)
    return bundle


def show(figure: go.Figure, *, png: bool = True, scale: float = 1.0) -> None:
    """Display ``figure`` in Jupyter as one output with the interactive figure and its
    PNG (:func:`figure_bundle`), so that a saved notebook shows the figure everywhere."""
    from IPython.display import display

    display(figure_bundle(figure, png=png, scale=scale), raw=True)
