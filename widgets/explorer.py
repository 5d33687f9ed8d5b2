"""SpectrumExplorer: truncate a matrix at rank r and see what is kept, what is lost, and what an init takes.

Pick a layer (or any matrix), move the rank slider, and four views move together:

* the **spectrum** σ_i with the cut between σ_r and σ_{r+1} (kept values coloured, dropped ones grey),
  and — for a LoRA-family init that copies singular directions into ``BA`` (PiSSA: the top r,
  MiLoRA: the bottom r) — the directions that init takes, circled;
* the **error and energy against rank**: the Eckart–Young bound ``‖W − W_r‖_F / ‖W‖_F`` and the
  energy ``Σ_{i≤r} σ_i² / Σ σ_i²`` for every r, with the current r's *measured* error (from the
  actual reconstruction) sitting on the bound — the Eckart–Young theorem, checked each time;
* the matrix **W**, its **rank-r reconstruction W_r** and the **residual W − W_r** as heatmaps on one
  colour scale, so the residual visibly fades as r grows.

The SVD is computed once per matrix (and cached per layer); a rank change only multiplies the
first r factors back together, which keeps a change well under 100 ms for a 512×512 matrix on a CPU
(``benchmarks/widget_latency.py`` measures it). The init selector reads the library's table of
LoRA initializations (:data:`spectrallab.methods.lora.INIT_SPECTRUM_PART`) when the widget is built,
so an init registered later (``register_init(name, spectrum_part=...)``) appears in widgets built
after it, with no change here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from spectrallab.linalg import as_matrix, eckart_young_error, energy, rank_for_energy, svd
from spectrallab.methods.base import AdaptedLinear
from spectrallab.methods.lora import LORA_INITS, spectrum_indices
from spectrallab.tasks.teacher import random_orthonormal

from . import static
from .base import Widget
from .plots import style

DEMO_LAYER = "demo: 512×512, decaying spectrum + noise"
# The heatmaps show the entries at evenly strided rows and columns, at most this many of each: enough
# to see the structure, and a live update sends 2 × 64² numbers to the browser instead of 2 × 512²
# (in a Jupyter kernel, serializing the update is most of a rank change's cost).
HEATMAP_SIDE = 64

KEPT_COLOR = "#1f77b4"
DROPPED_COLOR = "#8c8c8c"  # grey, but 3.4:1 on white (readable, as every series colour)
INIT_COLOR = "#d62728"
ENERGY_COLOR = "#2ca02c"

# Positions of the traces in ``SpectrumExplorer.figure.data`` (fixed: traces are updated, never replaced).
KEPT, DROPPED, TAKEN, BOUND, ENERGY, MEASURED, ENERGY_AT_R, W_MAP, W_R_MAP, RESIDUAL_MAP = range(10)


def demo_matrix(size: int = 512, seed: int = 0) -> torch.Tensor:
    """A deterministic ``size × size`` matrix whose spectrum decays and then sinks into noise.

    ``W = U diag(σ) Vᵀ + E`` with ``σ_i = e^{−i/32}`` and Gaussian noise ``E`` of entry variance
    ``0.02² / size`` (its own singular values fill ``[0, 0.04]``, Marchenko–Pastur), so the top ~100
    directions stand clear of a noise floor and the knee is where truncating stops paying. The
    singular vectors are cosine waves ordered by frequency (each block of 16 neighbouring frequencies
    mixed by a random rotation, so ``W`` is not a simple product of waves): low ranks reconstruct the
    coarse picture, higher ranks add finer detail — like compressing an image — which the heatmaps show.
    """
    generator = torch.Generator().manual_seed(seed)
    sigma = torch.exp(-torch.arange(size, dtype=torch.float64) / 32)
    U = _mixed_cosines(size, generator)
    V = _mixed_cosines(size, generator)
    noise = 0.02 / math.sqrt(size) * torch.randn(size, size, generator=generator, dtype=torch.float64)
    return ((U * sigma) @ V.T + noise).float()


def _mixed_cosines(size: int, generator: torch.Generator, block: int = 16) -> torch.Tensor:
    """An orthonormal basis of cosine waves (DCT-II, by rising frequency), mixed in blocks of ``block``."""
    j = torch.arange(size, dtype=torch.float64)[:, None] + 0.5
    basis = torch.cos(math.pi * j * torch.arange(size, dtype=torch.float64)[None, :] / size) * math.sqrt(2 / size)
    basis[:, 0] /= math.sqrt(2)
    for start in range(0, size, block):
        width = min(block, size - start)
        rotation = random_orthonormal(width, width, generator).double()
        basis[:, start : start + width] = basis[:, start : start + width] @ rotation
    return basis


def matrix_sources(source: Any) -> dict[str, Any]:
    """The matrices a widget can show, by name: ``{name: tensor or layer or "demo"}``.

    * ``None``: the demo matrix (:func:`demo_matrix`).
    * a 2-D tensor or array: that matrix, named "matrix".
    * an ``nn.Linear`` or an adapted layer: its (effective) weight, named by its class.
    * a mapping ``{name: tensor or layer}``: those.
    * any other model: its ``nn.Linear`` and adapted layers by module name (adapted layers show their
      effective weight ``W + ΔW``).
    """
    if source is None:
        return {DEMO_LAYER: "demo"}
    if isinstance(source, np.ndarray):
        source = torch.from_numpy(source)
    if isinstance(source, torch.Tensor):
        return {"matrix": source}
    if isinstance(source, (nn.Linear, AdaptedLinear)):
        return {type(source).__name__: source}
    if isinstance(source, Mapping):
        return {str(name): torch.from_numpy(x) if isinstance(x, np.ndarray) else x for name, x in source.items()}
    if isinstance(source, nn.Module):
        layers: dict[str, nn.Module] = {}
        for name, module in source.named_modules():
            inside_adapted = any(
                name.startswith(outer + ".") for outer, m in layers.items() if isinstance(m, AdaptedLinear)
            )
            if isinstance(module, (nn.Linear, AdaptedLinear)) and not inside_adapted:
                layers[name or type(module).__name__] = module
        if not layers:
            raise ValueError(f"{type(source).__name__} has no nn.Linear or adapted layer to explore")
        return layers
    raise TypeError(
        f"source must be None, a 2-D tensor, a linear/adapted layer, a mapping of those or a model; "
        f"got {type(source).__name__}"
    )


def _shape_label(name: str, item: Any) -> str:
    """``"fc1 (32×16)"`` for the layer dropdown, without computing anything."""
    if isinstance(item, AdaptedLinear):
        shape = (item.out_features, item.in_features)
    elif isinstance(item, nn.Module) and isinstance(getattr(item, "weight", None), torch.Tensor):
        shape = tuple(item.weight.shape)
    elif isinstance(item, torch.Tensor):
        shape = tuple(item.shape)
    else:
        return name
    return f"{name} ({'×'.join(map(str, shape))})"


class Decomposition:
    """Everything about one matrix that does not depend on the rank, computed once.

    ``U, S, Vh`` (exact SVD), ``‖W‖_F``, the energy captured and the relative Eckart–Young error for
    every rank, and the strided rows/columns the heatmaps show.
    """

    def __init__(self, matrix: torch.Tensor):
        self.W = matrix.float()
        self.m, self.n = self.W.shape
        self.k = min(self.m, self.n)
        self.U, self.S, self.Vh = svd(self.W)
        self.US = self.U * self.S  # so a rank-r reconstruction is one matmul: US[:, :r] @ Vh[:r]
        self.norm = float(torch.linalg.matrix_norm(self.W))
        self.energy = energy(self.S).double().cpu().numpy()  # [r-1] → energy at rank r
        self.relative_bound = np.sqrt(np.clip(1.0 - self.energy, 0.0, None))  # ‖W − W_r‖_F / ‖W‖_F
        self.sigma = self.S.double().cpu().numpy()
        self.rows = _stride(self.m)
        self.cols = _stride(self.n)
        self.W_sample = self.W[self.rows][:, self.cols].cpu().numpy()
        # The factors restricted to the shown rows and columns: a sample of W_r is then a tiny matmul.
        self._US_rows = self.US[self.rows].cpu()
        self._Vh_cols = self.Vh[:, self.cols].cpu()
        self.color_limit = float(np.abs(self.W_sample).max()) or 1.0

    def reconstruction(self, rank: int) -> torch.Tensor:
        """``W_r = U_r diag(S_r) Vh_r``, the best rank-r approximation (all of it, on W's device)."""
        return self.US[:, :rank] @ self.Vh[:rank]

    def reconstruction_sample(self, rank: int) -> np.ndarray:
        """The entries of ``W_r`` at the heatmaps' rows and columns (the same numbers, without all of ``W_r``)."""
        return (self._US_rows[:, :rank] @ self._Vh_cols[:rank]).numpy()


def _stride(size: int) -> torch.Tensor:
    """Evenly spaced indices, at most ``HEATMAP_SIDE`` of them (every entry for small matrices)."""
    return torch.linspace(0, size - 1, min(size, HEATMAP_SIDE)).round().long()


@dataclass
class Readout:
    """The numbers the widget reports for the current rank (also in its title and status line)."""

    layer: str
    rank: int
    k: int
    energy: float  # fraction of ‖W‖_F² kept by the top r singular values
    error: float  # measured ‖W − W_r‖_F of the reconstruction
    bound: float  # Eckart–Young: √Σ_{i>r} σ_i², the smallest possible rank-r error
    relative_error: float  # error / ‖W‖_F
    init: str
    init_indices: list[int]  # 0-based spectrum indices the init copies into BA (empty for LoRA's own)
    init_energy: float  # fraction of ‖W‖_F² in those directions


class SpectrumExplorer(Widget):
    """Truncate a matrix at rank r: the spectrum with the cut, error against the Eckart–Young bound,
    energy captured, ``W``/``W_r``/``W − W_r``, and which singular directions an init takes.

    ``SpectrumExplorer()`` shows a 512×512 demo matrix; ``SpectrumExplorer(model)`` a dropdown over
    the model's linear and adapted layers; ``SpectrumExplorer(tensor)`` any matrix.

    Controls: ``layer``, ``rank`` (default: the rank that keeps 90 % of the energy), ``init`` (a
    registered LoRA init) and ``log_y`` (log scale for σ). The numbers of the current view are in
    :attr:`readout`.
    """

    def __init__(
        self,
        source: Any = None,
        *,
        layer: str | None = None,
        rank: int | None = None,
        init: str | None = None,
        log_y: bool = True,
        live: bool | None = None,
        hide: Iterable[str] = (),
    ):
        super().__init__(live=live, hide=hide)
        self.sources = matrix_sources(source)
        self._decompositions: dict[str, Decomposition] = {}
        self._syncing = False  # set while the widget itself adjusts controls (no redraw per adjustment)
        self.readout: Readout | None = None

        layer = next(iter(self.sources)) if layer is None else layer
        if layer not in self.sources:
            raise ValueError(f"layer={layer!r} is not one of {', '.join(map(repr, self.sources))}")
        inits = list(LORA_INITS)
        init = ("default" if "default" in inits else inits[0]) if init is None else init
        if init not in inits:
            raise ValueError(f"init={init!r} is not a registered LoRA init; registered: {', '.join(inits)}")
        decomposition = self.decomposition(layer)
        if rank is None:
            rank = rank_for_energy(decomposition.S, 0.9)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= decomposition.k:
            raise ValueError(f"rank={rank!r} is outside the allowed range [1, {decomposition.k}] for layer {layer!r}")

        self.controls = {
            "layer": W.Dropdown(
                options=[(_shape_label(name, item), name) for name, item in self.sources.items()],
                value=layer,
                description="layer",
                layout=W.Layout(width="320px"),
            ),
            "rank": W.IntSlider(
                value=int(rank),
                min=1,
                max=decomposition.k,
                description="rank r",
                continuous_update=True,
                layout=W.Layout(width="360px"),
            ),
            "init": W.Dropdown(options=inits, value=init, description="init", layout=W.Layout(width="220px")),
            "log_y": W.Checkbox(value=bool(log_y), description="log σ", indent=False, layout=W.Layout(width="80px")),
        }
        self.figure = self.make_figure(self._empty_figure())
        self._draw_layer()
        self._observe("layer", self._draw_layer)
        self._observe("rank", self._draw_rank)
        self._observe("init", self._draw_rank)
        self._observe("log_y", self._draw_scale)
        self._finish_controls()

    # -- data ------------------------------------------------------------------------------------
    def decomposition(self, layer: str) -> Decomposition:
        """The (cached) SVD of a layer's matrix: computed the first time the layer is shown."""
        if layer not in self._decompositions:
            item = self.sources[layer]
            matrix = demo_matrix() if isinstance(item, str) and item == "demo" else as_matrix(item, name=layer)
            self._decompositions[layer] = Decomposition(matrix)
        return self._decompositions[layer]

    @property
    def current(self) -> Decomposition:
        return self.decomposition(self.controls["layer"].value)

    # -- figure ----------------------------------------------------------------------------------
    def _empty_figure(self) -> go.Figure:
        """The figure's fixed skeleton: every trace and shape exists from the start and is only updated."""
        fig = make_subplots(
            rows=2,
            cols=3,
            specs=[[{"colspan": 2}, None, {}], [{}, {}, {}]],
            row_heights=[0.55, 0.45],
            vertical_spacing=0.12,
            horizontal_spacing=0.06,
            subplot_titles=[
                "Singular values σ<sub>i</sub>",
                "Error and energy against rank r",
                "W",
                "W<sub>r</sub> (rank-r reconstruction)",
                "W − W<sub>r</sub> (what is lost)",
            ],
        )
        kept = dict(mode="lines+markers", marker=dict(size=4))
        fig.add_trace(
            go.Scatter(name="kept σ<sub>1</sub> … σ<sub>r</sub>", line=dict(color=KEPT_COLOR), **kept), row=1, col=1
        )
        fig.add_trace(
            go.Scatter(name="dropped σ<sub>r+1</sub> … σ<sub>k</sub>", line=dict(color=DROPPED_COLOR), **kept),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                name="taken into BA by the init",
                mode="markers",
                marker=dict(symbol="circle-open", size=9, color=INIT_COLOR, line=dict(width=2)),
            ),
            row=1,
            col=1,
        )
        bound_name = "Eckart–Young bound ‖W − W<sub>r</sub>‖<sub>F</sub> / ‖W‖<sub>F</sub>"
        fig.add_trace(go.Scatter(name=bound_name, mode="lines", line=dict(color=KEPT_COLOR)), row=1, col=3)
        fig.add_trace(go.Scatter(name="energy captured", mode="lines", line=dict(color=ENERGY_COLOR)), row=1, col=3)
        fig.add_trace(
            go.Scatter(name="measured error at r", mode="markers", marker=dict(symbol="x", size=11, color="black")),
            row=1,
            col=3,
        )
        fig.add_trace(
            go.Scatter(name="energy at r", mode="markers", showlegend=False, marker=dict(size=9, color=ENERGY_COLOR)),
            row=1,
            col=3,
        )
        for col, name in zip((1, 2, 3), ("W", "W_r", "W − W_r")):
            fig.add_trace(
                go.Heatmap(
                    name=name,
                    coloraxis="coloraxis",
                    hovertemplate="row %{y}, col %{x}: %{z:.3g}<extra>" + name + "</extra>",
                ),
                row=2,
                col=col,
            )
        for col in (1, 3):  # the cut, on the spectrum and on the error/energy panel
            fig.add_vline(x=1, line_dash="dash", line_color="gray", row=1, col=col)
        fig.update_layout(
            height=780,
            title_font_size=15,
            coloraxis=dict(colorscale="RdBu", cmid=0, colorbar=dict(title="entry", len=0.4, y=0.2)),
        )
        fig.update_xaxes(title_text="index i", row=1, col=1)
        fig.update_yaxes(title_text="singular value σ<sub>i</sub>", row=1, col=1)
        fig.update_xaxes(title_text="rank r", row=1, col=3)
        fig.update_yaxes(
            title_text="fraction of ‖W‖<sub>F</sub> (error) or ‖W‖<sub>F</sub>² (energy)",
            title_font_size=11,
            range=[0, 1.05],
            row=1,
            col=3,
        )
        for col, axis in zip((1, 2, 3), ("x3", "x4", "x5")):
            fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain", row=2, col=col)
            fig.update_yaxes(
                showticklabels=False,
                showgrid=False,
                zeroline=False,
                autorange="reversed",
                scaleanchor=axis,
                constrain="domain",
                row=2,
                col=col,
            )
        # the book's figure style; the title (set when drawing) has two lines
        return style(fig, title_lines=2)

    @property
    def cut_shapes(self) -> tuple:
        """The dashed lines marking the cut (between σ_r and σ_{r+1} on the spectrum; at r on the error panel)."""
        return self.figure.layout.shapes[:2]

    def _draw_layer(self) -> None:
        """A new matrix: its spectrum-wide curves and W, then everything that depends on the rank."""
        d = self.current
        self._syncing = True
        try:  # fit the slider to the new matrix; a rank beyond its k is clamped
            slider = self.controls["rank"]
            value = min(slider.value, d.k)
            slider.max = d.k
            slider.value = value
        finally:
            self._syncing = False
        ranks = np.arange(1, d.k + 1)
        with self.figure.batch_update():
            bound, energy_trace, w_map = (self.figure.data[i] for i in (BOUND, ENERGY, W_MAP))
            bound.x, bound.y = ranks, d.relative_bound
            energy_trace.x, energy_trace.y = ranks, d.energy
            w_map.z = d.W_sample
            w_map.x, w_map.y = d.cols.numpy(), d.rows.numpy()
            for heatmap in (self.figure.data[W_R_MAP], self.figure.data[RESIDUAL_MAP]):
                heatmap.x, heatmap.y = d.cols.numpy(), d.rows.numpy()
            self.figure.layout.coloraxis.cmin = -d.color_limit
            self.figure.layout.coloraxis.cmax = d.color_limit
            self.figure.layout.xaxis.range = [0.5 - 0.02 * d.k, d.k * 1.02 + 0.5]
            self.figure.layout.xaxis2.range = [0, d.k * 1.02 + 1]
            self._draw_scale()
            self._draw_rank()

    def _draw_rank(self) -> None:
        """The rank (or the init) changed: reconstruct, measure, and move the cut, traces and heatmaps."""
        d = self.current
        r = int(self.controls["rank"].value)
        init = self.controls["init"].value
        error = float(torch.linalg.matrix_norm(d.W - d.reconstruction(r)))  # measured, not read off the spectrum
        W_r_sample = d.reconstruction_sample(r)
        taken = spectrum_indices(init, d.k, r)
        self.readout = Readout(
            layer=self.controls["layer"].value,
            rank=r,
            k=d.k,
            energy=float(d.energy[r - 1]),
            error=error,
            bound=float(eckart_young_error(d.S, r)),
            relative_error=error / d.norm if d.norm else 0.0,
            init=init,
            init_indices=taken,
            init_energy=float(np.square(d.sigma[taken]).sum() / np.square(d.sigma).sum()) if taken and d.norm else 0.0,
        )
        index = np.arange(1, d.k + 1)
        fig = self.figure
        with fig.batch_update():
            kept, dropped, init_marks = fig.data[KEPT], fig.data[DROPPED], fig.data[TAKEN]
            measured, energy_mark = fig.data[MEASURED], fig.data[ENERGY_AT_R]
            W_r_map, residual_map = fig.data[W_R_MAP], fig.data[RESIDUAL_MAP]
            kept.x, kept.y = index[:r], d.sigma[:r]
            dropped.x, dropped.y = index[r:], d.sigma[r:]
            init_marks.x, init_marks.y = index[taken], d.sigma[taken]
            init_marks.name = f"taken into BA by init '{init}'"
            init_marks.visible = bool(taken)
            measured.x, measured.y = [r], [self.readout.relative_error]
            energy_mark.x, energy_mark.y = [r], [self.readout.energy]
            W_r_map.z = W_r_sample
            residual_map.z = d.W_sample - W_r_sample
            spectrum_cut, error_cut = fig.layout.shapes[:2]
            spectrum_cut.x0 = spectrum_cut.x1 = r + 0.5
            error_cut.x0 = error_cut.x1 = r
            fig.layout.annotations[3].text = f"W<sub>r</sub> (rank-{r} reconstruction)"
            fig.layout.title.text = self._title()
        self.status.value = self._status_html()
        self.error = None

    def _draw_scale(self) -> None:
        with self.figure.batch_update():
            self.figure.layout.yaxis.type = "log" if self.controls["log_y"].value else "linear"

    # -- words -----------------------------------------------------------------------------------
    def _title(self) -> str:
        o = self.readout
        return (
            f"r = {o.rank} of {o.k}: energy captured {o.energy:.1%}, ‖W − W<sub>r</sub>‖<sub>F</sub> = "
            f"{o.error:.4g} (Eckart–Young bound {o.bound:.4g})<br>"
            f"<sup>{o.layer} · {self._init_sentence()}</sup>"
        )

    def _init_sentence(self) -> str:
        """What the selected init takes from the spectrum, worked out from the library's table."""
        o = self.readout
        if not o.init_indices:
            return f"init '{o.init}' copies no singular directions of W into BA"
        first, last = o.init_indices[0] + 1, o.init_indices[-1] + 1
        if len(o.init_indices) == 1:
            which = f"σ<sub>{first}</sub>"
        elif last - first + 1 == len(o.init_indices):  # contiguous (PiSSA's top r, MiLoRA's bottom r)
            which = f"σ<sub>{first}</sub> … σ<sub>{last}</sub>"
        else:
            which = f"{len(o.init_indices)} singular directions (circled)"
        return (
            f"init '{o.init}' copies {which} ({o.init_energy:.1%} of the energy) into BA; the frozen W keeps the rest"
        )

    def _status_html(self) -> str:
        o = self.readout
        return (
            f"r = {o.rank}/{o.k} · energy captured {o.energy:.1%} · ‖W − W<sub>r</sub>‖<sub>F</sub> = "
            f"{o.error:.4g} (Eckart–Young bound {o.bound:.4g}; {o.relative_error:.1%} of ‖W‖<sub>F</sub>) · "
            f"{self._init_sentence()}"
        )

    # -- the static page -------------------------------------------------------------------------
    # Traces and layout the rank slider moves (everything else depends only on the layer or scale).
    RANK_TRACES = (KEPT, DROPPED, TAKEN, MEASURED, ENERGY_AT_R, W_R_MAP, RESIDUAL_MAP)
    RANK_KEYS = ("x", "y", "z", "name")

    def static_ranks(self, count: int = 10) -> list[int]:
        """The ranks the static slider offers: a geometric grid over 1 … k, plus the current rank."""
        return static.rank_grid(self.current.k, count, keep=[int(self.controls["rank"].value)])

    def static_states(self, ranks: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """``{rank: state}`` for the static slider, each drawn by the live code (set the control, read
        the figure): ``traces`` (the :data:`RANK_TRACES`, by init for the init's circles), ``shapes``
        (the two cuts' x), ``annotation`` (the W_r panel title) and ``title``. The controls are
        restored afterwards."""
        ranks = self.static_ranks() if ranks is None else list(ranks)
        c = self.controls
        start_rank, start_init = c["rank"].value, c["init"].value
        states: dict[int, dict[str, Any]] = {}
        try:
            for r in ranks:
                c["rank"].value = int(r)
                taken: dict[str, dict] = {}
                for init in self._static_inits():
                    c["init"].value = init
                    if self.error is not None:
                        raise self.error
                    circles = self.figure.data[TAKEN].to_plotly_json()
                    circles["name"] = self._taken_label()
                    taken[init] = circles
                c["init"].value = start_init
                fig = self.figure
                states[int(r)] = {
                    "traces": {i: fig.data[i].to_plotly_json() for i in self.RANK_TRACES},
                    "taken": taken,
                    "shapes": [(s.x0, s.x1) for s in fig.layout.shapes[:2]],
                    "annotation": fig.layout.annotations[3].text,
                    "title": self._static_title(),
                }
        finally:
            c["rank"].value, c["init"].value = start_rank, start_init
        return states

    def _static_inits(self) -> list[str]:
        """The current init first, then every other init that copies singular directions into BA."""
        current = self.controls["init"].value
        k = self.current.k
        return [current] + [i for i in self.controls["init"].options if i != current and spectrum_indices(i, k, 1)]

    def _taken_label(self) -> str:
        """The init's circles in the legend of the static figure: what it copies, and how much energy."""
        sentence = self._init_sentence()
        return sentence.split(" into BA")[0] + " into BA" if " into BA" in sentence else sentence

    def _static_title(self) -> str:
        """The live title, its second line about the layer and the slider (the init's sentence is in
        the legend there: the slider and the init menu move independently)."""
        first = self._title().split("<br>")[0]
        return f"{first}<br><sup>{self.readout.layer} · circled: what the chosen init copies into BA</sup>"

    def static_figure(self) -> go.Figure:
        """The figure with a plotly rank slider, an init menu and a log/linear switch that work with
        no kernel: each rank of :meth:`static_ranks` is a slider step whose data the live widget drew.

        Trace positions 0–9 are the live figure's; one extra circle trace per other spectral init
        (PiSSA's top r, MiLoRA's bottom r) follows them, shown by the init menu."""
        states = self.static_states([int(self.controls["rank"].value)] if "rank" in self.hidden else None)
        inits = self._static_inits()
        current_rank = int(self.controls["rank"].value)
        fig = go.Figure(self.figure)
        extra = {}
        for init in inits[1:]:
            extra[init] = len(fig.data)
            fig.add_trace(go.Scatter(states[current_rank]["taken"][init]))
            fig.data[-1].visible = False
        circle_of = {inits[0]: TAKEN, **extra}
        traces = list(self.RANK_TRACES) + list(extra.values())

        steps = []
        for r, state in states.items():
            data = [state["traces"][i] for i in self.RANK_TRACES[:2]]
            data += [state["taken"][inits[0]]] + [state["traces"][i] for i in self.RANK_TRACES[3:]]
            data += [state["taken"][init] for init in extra]
            (s0, s1), (e0, e1) = state["shapes"]
            layout = {
                "shapes[0].x0": s0,
                "shapes[0].x1": s1,
                "shapes[1].x0": e0,
                "shapes[1].x1": e1,
                "annotations[3].text": state["annotation"],
                "title.text": state["title"],
            }
            steps.append(
                dict(method="update", label=str(r), args=[static.trace_changes(data, self.RANK_KEYS), layout, traces])
            )
        fig.data[TAKEN].name = states[current_rank]["taken"][inits[0]]["name"]
        fig.layout.title.text = states[current_rank]["title"]

        k = self.current.k
        menu = []
        for init in self.controls["init"].options:
            # An init that copies nothing (LoRA's own) shows no circles, as in the live widget.
            shown = circle_of.get(init) if spectrum_indices(init, k, 1) else None
            visible = [index == shown for index in circle_of.values()]
            menu.append(
                dict(method="restyle", label=f"init: {init}", args=[{"visible": visible}, list(circle_of.values())])
            )
        log = bool(self.controls["log_y"].value)
        scale = [
            dict(method="relayout", label="log σ", args=[{"yaxis.type": "log"}]),
            dict(method="relayout", label="linear σ", args=[{"yaxis.type": "linear"}]),
        ]
        # A control the instructor hid (``hide=``) is not offered on the static page either.
        menus = []
        if "init" not in self.hidden:
            active = list(self.controls["init"].options).index(inits[0])
            menus.append(static.buttons(menu, active, x=0.64, y=-0.045, kind="dropdown", name="init"))
        if "log_y" not in self.hidden:
            menus.append(static.buttons(scale, 0 if log else 1, x=0.82, y=-0.045, name="scale"))
        sliders = (
            []
            if "rank" in self.hidden
            else [static.slider(steps, list(states).index(current_rank), "rank r = ", length=0.6)]
        )
        extra_height = 100 if sliders or menus else 0
        fig.update_layout(
            height=(fig.layout.height or 780) + extra_height,
            margin_b=(fig.layout.margin.b or 30) + extra_height,
            sliders=sliders,
            updatemenus=menus,
        )
        fig.layout.meta = {"spectrallab": {"widget": "SpectrumExplorer", "ranks": list(states), "k": k}}
        return fig

    def static_note(self) -> str:
        ranks = ", ".join(map(str, self.static_ranks()))
        return static.note(
            f"This figure works without a kernel: drag the rank slider (ranks {ranks}, computed when the "
            "book was built), pick an init, switch the σ scale. Other ranks and the layer menu need the live widget."
        )

    # -- plumbing --------------------------------------------------------------------------------
    def _observe(self, name: str, redraw) -> None:
        """Redraw when a control changes; an exception is shown in the widget, never lost."""

        def handler(change: dict) -> None:
            if self._syncing:
                return
            try:
                redraw()
            except Exception as error:  # noqa: BLE001 — the reader must see it, whatever it is
                self.show_error(f"changing {name} to {change.get('new')!r}", error)

        self.controls[name].observe(handler, names="value")
