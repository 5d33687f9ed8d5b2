"""The interactive layer of Spectral Lab: plotly figures now, live ipywidgets controls on top of them.

It imports the library; the library never imports it.
"""

from .display import use_offline_renderer
from .plots import bar_figure, curves_figure, spectrum_evolution_figure, spectrum_figure

use_offline_renderer()

__all__ = ["spectrum_figure", "curves_figure", "spectrum_evolution_figure", "bar_figure"]
