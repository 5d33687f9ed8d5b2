"""The contract every widget keeps (docs/DESIGN.md, "Widgets").

* It builds with defaults: ``Playground()`` just works.
* ``.figure`` is its plotly figure — a ``FigureWidget`` in live mode, a plain ``go.Figure`` in static
  mode (see :func:`.display.live_mode`) — updated by the same code in both.
* ``.controls`` are ipywidgets keyed by name; ``.state`` is a plain dict of their values, and
  ``Widget.from_state(state, hide=[...])`` rebuilds the same configuration with chosen controls
  hidden, so an instructor can pin a setup for a lesson.
* Displaying it shows controls + figure when live; when static, :meth:`Widget.static_figure` (the
  figure, with plotly sliders and buttons over precomputed states where the widget's controls are
  cheap — see :mod:`.static`) and :meth:`Widget.static_note` (what works on the page, and how to get
  the live widget).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
from IPython.display import HTML, display

from . import static
from .display import live_mode


class Widget:
    """Base class: subclasses build ``self.controls`` and draw into ``self.figure``."""

    def __init__(self, *, live: bool | None = None, hide: Iterable[str] = ()):
        self.live = live_mode() if live is None else live
        self.controls: dict[str, W.ValueWidget] = {}
        self.status = W.HTML()
        self._hidden: set[str] = set()
        self._pending_hide = tuple(hide)

    # -- figure ----------------------------------------------------------------------------------
    def make_figure(self, figure: go.Figure) -> go.Figure:
        """The widget's figure in the right mode: a FigureWidget (updates in place) when live."""
        return go.FigureWidget(figure) if self.live else figure

    # -- state -----------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """The controls' values; ``type(self).from_state(self.state)`` rebuilds this configuration."""
        return {name: control.value for name, control in self.controls.items() if hasattr(control, "value")}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, hide: Iterable[str] = (), **kwargs: Any) -> Widget:
        return cls(**state, hide=hide, **kwargs)

    @property
    def hidden(self) -> frozenset[str]:
        """Names of the controls hidden with :meth:`hide` (or ``hide=`` at construction)."""
        return frozenset(self._hidden)

    def hide(self, *names: str) -> Widget:
        """Hide controls by name (their values still apply): pin a setting for a lesson."""
        unknown = sorted(set(names) - set(self.controls))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no control(s) {', '.join(map(repr, unknown))}; "
                f"controls: {', '.join(self.controls)}"
            )
        for name in names:
            self.controls[name].layout.display = "none"
            self._hidden.add(name)
        return self

    def _finish_controls(self) -> None:
        """Subclasses call this once their controls exist: applies ``hide=``."""
        if self._pending_hide:
            self.hide(*self._pending_hide)

    # -- display ---------------------------------------------------------------------------------
    def control_panel(self) -> W.Widget:
        return W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap"))

    def view(self) -> W.Widget:
        """The live layout: controls, status line, figure."""
        if isinstance(self.figure, go.FigureWidget):
            # plotly >= 6 sends changes made before display only from the FigureWidget's own
            # _repr_mimebundle_, which never runs for a figure nested in a VBox: without this call
            # the page would miss everything drawn before it was shown (plotly.py #4998).
            self.figure._repr_mimebundle_()
        return W.VBox([self.control_panel(), self.status, self.figure])

    def _ipython_display_(self) -> None:
        if self.live:
            display(self.view())
        else:
            display(self.static_figure())
            display(HTML(self.static_note()))

    def static_figure(self) -> go.Figure:
        """What a page without a kernel shows: here the figure as it stands; widgets whose controls are
        cheap override this with plotly sliders and buttons over states their own code computed."""
        return self.figure

    def static_note(self) -> str:
        """The line under the static figure: what works on the page, and how to get the live widget."""
        return static.note("A static snapshot: the controls need a kernel.")

    def show_error(self, where: str, error: BaseException) -> None:
        """Put an exception's message where the reader sees it (never lost in a thread)."""
        self.error = error
        self.status.value = (
            f"<pre style='color:#b00020;white-space:pre-wrap;margin:0'>{where}: "
            f"{type(error).__name__}: {_escape(str(error))}</pre>"
        )

    error: BaseException | None = None


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
