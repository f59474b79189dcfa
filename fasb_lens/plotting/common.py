"""Grid helpers and the one function that writes figures to disk."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import plotly.graph_objects as go
from torch import Tensor

from fasb_lens.plotting.style import HEIGHT, WIDTH

logger = logging.getLogger(__name__)


def grid(values: Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in values.tolist()]


def to_png(figure: go.Figure, *, scale: float = 1.0) -> bytes:
    """``figure`` as PNG bytes, rendered by kaleido (which drives a Chrome/Chromium): the
    figure's own size when its layout sets one, else
    :data:`~fasb_lens.plotting.style.WIDTH` x :data:`~fasb_lens.plotting.style.HEIGHT`,
    times ``scale``. Raises whatever kaleido raises when it cannot render."""
    width, height = figure.layout.width or WIDTH, figure.layout.height or HEIGHT
    return figure.to_image(format="png", width=width, height=height, scale=scale)


def save_figure(figure: go.Figure, path: str | Path, *, png: bool = True) -> list[Path]:
    """Write ``path`` as ``.html`` (always) and ``.png`` (if a renderer is available).

    The HTML loads plotly.js from a ``plotly.min.js`` written once beside it (so a
    folder of figures holds one copy, and opens offline) and fills its window unless the
    figure sets a size. The PNG has the figure's own size when its layout sets one, else
    :data:`~fasb_lens.plotting.style.WIDTH` x :data:`~fasb_lens.plotting.style.HEIGHT`.

    PNG export needs the ``kaleido`` package and a Chrome or Chromium on the machine (on
    Debian: ``apt-get install chromium``); without them only the HTML is written and a
    warning (once per process, :func:`no_png`) says what to install. Returns the files
    written.
    """
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    html = base.with_suffix(".html")
    figure.write_html(html, include_plotlyjs="directory")  # plotly.min.js beside it: offline
    written = [html]
    if png:
        try:
            base.with_suffix(".png").write_bytes(to_png(figure, scale=1.5))
            written.append(base.with_suffix(".png"))
        except Exception as error:  # kaleido missing, or no browser for it to drive
            no_png(base.name, error)
    return written


_WARNED: set[str] = set()


def no_png(what: str, error: Exception) -> None:
    """Say that ``what`` has no PNG because kaleido could not render it: a warning naming
    what to install the first time in a process, a debug line after (a folder of figures
    then warns once, not once per figure)."""
    reason = type(error).__name__
    log = logger.debug if reason in _WARNED else logger.warning
    _WARNED.add(reason)
    log(
        "no PNG of %s (%s): HTML only; for PNGs install kaleido (pip install "
        "'fasb-lens[figures]') and a Chrome/Chromium (apt-get install chromium)",
        what,
        reason,
    )
