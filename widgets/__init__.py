"""The interactive layer of Spectral Lab: plotly figures now, live ipywidgets controls on top of them.

It imports the library; the library never imports it. Importing it makes plotly render offline
(see :mod:`.display`).
"""

from . import plots
from .compare import Compare
from .display import live_mode, use_offline_renderer
from .explorer import SpectrumExplorer
from .playground import Playground
from .plots import (
    bar_figure,
    curves_figure,
    density_figure,
    grouped_bar_figure,
    lines_figure,
    palette,
    spectrum_evolution_figure,
    spectrum_figure,
    tradeoff_figure,
    trajectories_figure,
)
from .session import SCENARIOS, Metric, Scenario, TrainingSession
from .sst_view import SSTView

use_offline_renderer()

__all__ = [
    "Playground",
    "SpectrumExplorer",
    "Compare",
    "SSTView",
    "Metric",
    "Scenario",
    "SCENARIOS",
    "TrainingSession",
    "live_mode",
    "plots",
    "use_offline_renderer",
    "bar_figure",
    "curves_figure",
    "density_figure",
    "grouped_bar_figure",
    "lines_figure",
    "palette",
    "spectrum_evolution_figure",
    "spectrum_figure",
    "tradeoff_figure",
    "trajectories_figure",
]
