"""Figures: pure functions from data to plotly figures, and one function that saves them.

Every function here takes plain data (tensors, traces, summaries) and returns a
``plotly.graph_objects.Figure``; none shows, writes or changes anything. Only
:func:`save_figure` touches the disk: HTML always (plotly.js written once beside the
files, not inlined in each), PNG when ``kaleido`` can find a Chrome/Chromium to render
with; :func:`show` displays a figure in Jupyter with a PNG of it in the same output, so a
saved notebook shows it where plotly.js does not run. All of them draw with one template
(:mod:`fasb_lens.plotting.style`): a fixed colour and a human name per policy, fractions in
percent, one font and layout.

* :func:`head_heatmap` - a value per head (probe accuracy, an ablation effect) as a
  layers x heads grid, anchored heads outlined (the paper's Figure 4);
* :func:`p_true_distributions` - the tracker's readings on the question alone versus
  during generation (the paper's Figure 1);
* :func:`trajectory` and :func:`trajectories` - ``p_true`` step by step, with the
  threshold, the trigger, the backtracked span and the steered continuation;
* :func:`token_view` - a generation's tokens as boxes coloured by ``p_true``, what the
  backtrack threw away struck through and the steered tokens outlined (the figure of
  :mod:`fasb_lens.trace_view`'s HTML and terminal views);
* :func:`method_comparison`, :func:`sweep_lines`, :func:`direction_share` - results of an
  experiment, and how much of each gain the learnt direction explains;
  :func:`dataset_accuracies` and :func:`dataset_sweeps` - the multiple-choice datasets,
  method by method, and each dataset's calibration;
* :func:`anchored_heads` - where the anchored heads sit and how their directions
  separate true from false answers (the best named, the rest pooled);
  :func:`anchored_heads_from_projections` the same from the projections themselves;
* :func:`grid_comparison` - two per-head grids (exact ablation, attribution estimate)
  side by side and against each other.
"""

from fasb_lens.plotting.common import save_figure
from fasb_lens.plotting.display import show
from fasb_lens.plotting.heads import (
    anchored_heads,
    anchored_heads_from_projections,
    grid_comparison,
    head_heatmap,
    steering_heads,
)
from fasb_lens.plotting.results import dataset_accuracies, direction_share, method_comparison
from fasb_lens.plotting.sweeps import dataset_sweeps, sweep_lines
from fasb_lens.plotting.tokens import token_view
from fasb_lens.plotting.tracking import p_true_distributions, trajectories, trajectory

__all__ = [
    "anchored_heads",
    "anchored_heads_from_projections",
    "dataset_accuracies",
    "dataset_sweeps",
    "direction_share",
    "grid_comparison",
    "head_heatmap",
    "method_comparison",
    "p_true_distributions",
    "save_figure",
    "show",
    "steering_heads",
    "sweep_lines",
    "token_view",
    "trajectories",
    "trajectory",
]
