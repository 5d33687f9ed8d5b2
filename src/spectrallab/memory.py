"""Where the memory of a training step goes — measured, next to what each paper's formula promises.

``memory_report(model, optimizer)`` counts the bytes a training step holds on to:

* **parameters** — every parameter tensor (shared ones once), split into trainable and frozen;
* **buffers** — non-parameter tensors of the model (index sets, frozen factors, shared random matrices);
* **gradients** — the ``.grad`` tensors *present* (only trainable parameters get one);
* **optimizer state** — every tensor in ``optimizer.state[p]``, nested ones included (a projection
  matrix kept inside a projector object, as GaLore does), with Adam's per-tensor ``step`` counters
  reported separately because no paper counts them;
* on CUDA, ``torch.cuda.max_memory_allocated`` — the only number here that includes activations.

It measures what exists, so **call it after at least one** ``loss.backward(); opt.step()`` **and
before** ``opt.zero_grad()``: Adam allocates its moments lazily on the first step, and
``zero_grad()`` (``set_to_none=True``, the default) frees the gradients. Called too early, the report
says so in its notes instead of reporting zeros silently::

    opt = sl.optimizer(model, lr=1e-3)
    loss_fn(model(x), y).backward(); opt.step()
    report = sl.memory_report(model, opt)    # before opt.zero_grad()
    print(report); report.as_dict()          # a table; plain numbers

**Formulas.** Next to the measurement, each adapted layer is counted with its method's formula
(:data:`FORMULAS`, one function per method, the paper cited in its docstring) for one ``m × n``
weight (``m = out_features``, ``n = in_features``, ``k = min(m, n)``, rank ``r``), as scalar counts:

==========  ====================================  ===================  ==========================
method      weights stored as parameters          trainable            optimizer state (Adam)
==========  ====================================  ===================  ==========================
full        mn                                    mn                   2mn
lora/relora mn + r(m+n)                           r(m+n)               2r(m+n)
galore      mn                                    mn                   min(m,n)·r + 2·max(m,n)·r
sltrain     r(m+n) + δmn                          r(m+n) + δmn         2(r(m+n) + δmn)
sst         k(m+n) + k  (all of U, Σ, Vh)         r(m+n) + k           2(r(m+n) + k)
==========  ====================================  ===================  ==========================

and the fine-tuning methods with their trainable counts (DoRA ``r(m+n)+m``, VeRA ``r+m``, LoRA-XS
``r²``, SVFit ``r``, SVFT ``nnz (+1)``, SORSA ``r(m+n)+r``, FFA-LoRA ``rm``). Gradients are always
as large as the trainable part — for GaLore that is the **full** ``mn``: GaLore shrinks the optimizer
state only; gradients (and activations) stay full size unless the training loop applies per-layer
updates during the backward pass, which ``sl.optimizer`` does not. The report keeps that visible: its
GaLore gradient row equals full training's.

The formulas cover the adapted weight matrices only (the papers count ``W``). Biases, embeddings,
norms and layers no method touched are measured in a separate "outside the formulas" row, so for
every method present the comparison *formula = measured* is exact (float32: 4 bytes per scalar),
and a mismatch means the implementation stores something its paper does not count. A method with
no formula here (a new one you registered) is reported measured-only, with a note saying so.

Choices where the papers leave room (each formula's docstring has the details):

* Adam's ``step`` counters (one scalar tensor per parameter) are measured but kept out of the
  comparison: no paper counts them. So are a method's bookkeeping buffers
  (``AdaptedLinear.state_buffers``: SST's and ReLoRA's step counters and random-generator states,
  kept in the model so a checkpoint resumes exactly): their bytes are in the measured buffers.
* GaLore's projector is on the smaller side (Table 1 assumes ``m ≤ n``: ``mr + 2nr``); the other
  ``proj_type`` values are counted as they store.
* SST's weights are all of ``U``, ``Σ``, ``Vh`` (the frozen ``k − r`` vectors are stored too), so it
  stores *more* weights than a dense layer while training and optimizing far fewer.
* Index sets (SLTrain's support, SVFT's pattern) are counted in elements, because their width
  (int64 here) is an implementation choice; their bytes are in the measured buffers.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .apply import adapted_layers
from .methods.base import AdaptedLinear


# -- formulas: scalar counts for one adapted m × n weight ----------------------------------------

@dataclass(frozen=True)
class LayerCounts:
    """Scalar counts for adapted weights (bias excluded), as a method's paper counts them.

    ``weights``: scalars stored as parameters for the weight (frozen + trainable); ``trainable``: of
    which trained (each has a gradient of its size); ``optimizer_states``: Adam's state (two moments
    per trained scalar unless the method projects); ``extra``: non-parameter storage the method needs
    (index sets, frozen factors kept as buffers), counted in elements of whatever dtype it uses,
    or None where the formula does not model it.
    """

    weights: int
    trainable: int
    optimizer_states: int
    extra: int | None = 0

    def __add__(self, other: "LayerCounts") -> "LayerCounts":
        extra = None if self.extra is None or other.extra is None else self.extra + other.extra
        return LayerCounts(self.weights + other.weights, self.trainable + other.trainable,
                           self.optimizer_states + other.optimizer_states, extra)

    @property
    def gradients(self) -> int:
        """Gradients are as large as what trains (GaLore: the full ``mn``)."""
        return self.trainable


Formula = Callable[..., LayerCounts]
FORMULAS: dict[str, Formula] = {}


def formula(*names: str):
    """Register a counting function ``f(m, n, **hyper) -> LayerCounts`` under method name(s)."""

    def decorate(fn: Formula) -> Formula:
        for name in names:
            FORMULAS[name] = fn
        return fn

    return decorate


def _adam(trainable: int) -> int:
    return 2 * trainable


@formula("full")
def full_counts(m: int, n: int, **_: Any) -> LayerCounts:
    """Dense training: ``mn`` weights, all trained; Adam keeps two moments per weight, ``2mn``."""
    return LayerCounts(m * n, m * n, _adam(m * n))


@formula("lora", "pissa", "milora", "olora", "relora")
def lora_counts(m: int, n: int, rank: int, keeps_initial_factors: bool = False, **_: Any) -> LayerCounts:
    """LoRA (Hu et al. 2021, arXiv:2106.09685): frozen ``W`` (mn) plus ``B`` (m×r) and ``A`` (r×n).

    Trainable ``r(m+n)``, Adam ``2r(m+n)``. The GaLore paper's Table 1 counts LoRA the same way
    (weights ``mn + mr + nr``, optimizer states ``2mr + 2nr``). ReLoRA (Lialin et al. 2024,
    arXiv:2307.05695) has the same layer between restarts: merging ``BA`` into ``W`` changes no size,
    and pruning Adam's state zeroes it without freeing it. PiSSA, MiLoRA, OLoRA (Meng et al. 2024,
    arXiv:2404.02948; Wang et al. 2025, arXiv:2406.09044; Büyükakyüz 2024, arXiv:2406.01775) are
    LoRA with another init, the same counts; when the init moves part of ``W`` into ``BA`` this
    library keeps the initial ``B₀, A₀`` as buffers (``r(m+n)`` extra) for the rank-2r export
    (:func:`spectrallab.methods.lora.export_lora`) — storage the papers do not have.
    """
    adapter = rank * (m + n)
    return LayerCounts(m * n + adapter, adapter, _adam(adapter), adapter if keeps_initial_factors else 0)


@formula("ffa_lora")
def ffa_lora_counts(m: int, n: int, rank: int, **_: Any) -> LayerCounts:
    """FFA-LoRA (Sun et al. 2024, arXiv:2403.12313): LoRA with ``A`` frozen; only ``B`` (``rm``) trains."""
    return LayerCounts(m * n + rank * (m + n), rank * m, _adam(rank * m))


@formula("dora")
def dora_counts(m: int, n: int, rank: int, **_: Any) -> LayerCounts:
    """DoRA (Liu et al. 2024, arXiv:2402.09353): LoRA plus a magnitude per output row, ``r(m+n) + m``."""
    trainable = rank * (m + n) + m
    return LayerCounts(m * n + trainable, trainable, _adam(trainable))


@formula("vera")
def vera_counts(m: int, n: int, rank: int, **_: Any) -> LayerCounts:
    """VeRA (Kopiczko et al. 2024, arXiv:2310.11454): frozen ``W`` plus ``λ_d`` (r) and ``λ_b`` (m).

    The random ``A``, ``B`` are shared by all layers (``r(n_max + m_max)`` once per model, buffers;
    the paper notes they can be regenerated from a seed), so they are not a per-layer count: ``extra``
    is None and the measured buffers show them.
    """
    trainable = rank + m
    return LayerCounts(m * n + trainable, trainable, _adam(trainable), None)


@formula("loraxs")
def loraxs_counts(m: int, n: int, rank: int, **_: Any) -> LayerCounts:
    """LoRA-XS (Bałazy et al. 2024, arXiv:2405.17604): frozen ``W``, ``U_r`` (m×r), ``diag(S_r)Vh_r``
    (r×n) and a trained ``r × r`` matrix: ``r²`` trainable, whatever the layer size."""
    return LayerCounts(m * n + rank * (m + n) + rank * rank, rank * rank, _adam(rank * rank))


@formula("svfit")
def svfit_counts(m: int, n: int, rank: int, **_: Any) -> LayerCounts:
    """SVFit (Sun et al. 2024, arXiv:2409.05926): only the top-r singular values train (``r``).

    Stored as this library does: ``W`` (mn), ``U_r`` (m×r), ``Vh_r`` (r×n), the initial ``σ_r``
    and the trained ``σ`` (r each): ``mn + r(m+n) + 2r``.
    """
    return LayerCounts(m * n + rank * (m + n) + 2 * rank, rank, _adam(rank))


@formula("svft")
def svft_counts(m: int, n: int, nnz: int, gate: bool = True, **_: Any) -> LayerCounts:
    """SVFT (Lingam et al. 2024, arXiv:2405.19597): frozen ``U`` (m×k), ``S`` (k), ``Vh`` (k×n)
    replace ``W``; the ``nnz`` values of the sparse ``M`` (plus a gate scalar) train. The pattern's
    row and column indices are buffers: ``2·nnz`` extra elements (int64 here)."""
    k = min(m, n)
    trainable = nnz + (1 if gate else 0)
    return LayerCounts(k * (m + n) + k + trainable, trainable, _adam(trainable), 2 * nnz)


@formula("sorsa")
def sorsa_counts(m: int, n: int, rank: int, **_: Any) -> LayerCounts:
    """SORSA (Cao 2024, arXiv:2409.00055): frozen residual ``W_res`` (mn) plus trained ``A`` (r×n),
    ``S_p`` (r) and ``B`` (m×r): ``r(m+n) + r`` trainable. This library also keeps the initial
    ``A₀, S₀, B₀`` as buffers (``r(m+n) + r`` extra) for the rank-2r PEFT export."""
    trainable = rank * (m + n) + rank
    return LayerCounts(m * n + trainable, trainable, _adam(trainable), trainable)


@formula("galore")
def galore_counts(m: int, n: int, rank: int, proj_type: str = "std", **_: Any) -> LayerCounts:
    """GaLore (Zhao et al. 2024, arXiv:2403.03507, Table 1): weights ``mn``, optimizer states
    ``mr + 2nr`` for ``m ≤ n``.

    The projector ``P`` is taken on the **smaller** side (``proj_type="std"``): the paper's Table 1
    assumes ``m ≤ n`` and stores ``P ∈ R^{m×r}``, with Adam's two moments on ``PᵀG ∈ R^{r×n}``; the
    official code does the same, projecting on the right when rows ≥ columns. For any shape that is
    ``min(m,n)·r + 2·max(m,n)·r``. The other ``proj_type`` values of ``galore-torch`` (and of
    :mod:`spectrallab.methods.galore`) are counted as they store: ``"reverse_std"`` the larger side,
    ``"left"`` ``mr + 2nr``, ``"right"`` ``nr + 2mr``, ``"full"`` both projectors and an ``r × r``
    pair of moments. All ``mn`` weights train, so **gradients stay ``mn``**: GaLore saves optimizer
    state, not gradient memory (the paper's per-layer weight updates, which free each gradient during
    backward, are a separate trick) and not activation memory.
    """
    small, large = min(m, n), max(m, n)
    if proj_type == "std":
        states = small * rank + 2 * large * rank
    elif proj_type == "reverse_std":
        states = large * rank + 2 * small * rank
    elif proj_type == "left":
        states = m * rank + 2 * n * rank
    elif proj_type == "right":
        states = n * rank + 2 * m * rank
    elif proj_type == "full":
        states = (m + n) * rank + 2 * rank * rank
    else:
        raise TypeError(f"unknown GaLore proj_type {proj_type!r}")
    return LayerCounts(m * n, m * n, states)


@formula("sltrain")
def sltrain_counts(m: int, n: int, rank: int, nnz: int, **_: Any) -> LayerCounts:
    """SLTrain (Han et al. 2024, arXiv:2406.02214): ``W = s·BA + S`` with no dense ``W``; ``B``
    (m×r), ``A`` (r×n) and the ``nnz ≈ δmn`` values of ``S`` train: ``r(m+n) + δmn``, Adam twice
    that. The fixed random support needs its indices too: ``nnz`` extra elements (one flat index per
    value; their width is the implementation's choice, so the report gives elements, and bytes as
    measured)."""
    trainable = rank * (m + n) + nnz
    return LayerCounts(trainable, trainable, _adam(trainable), nnz)


@formula("sst")
def sst_counts(m: int, n: int, rank: int, **_: Any) -> LayerCounts:
    """Sparse Spectral Training (Zhao et al., arXiv:2405.15481): ``W = U diag(Σ) Vh`` with all
    ``k`` singular values and ``r`` sampled singular vectors trained at a time: ``r(m+n) + k``
    trainable, Adam ``2(r(m+n) + k)`` (the memory-efficient implementation of the paper's §4.5).

    The other ``k − r`` columns of ``U`` and rows of ``Vh`` are stored frozen, so the weights held are
    all of ``U``, ``Σ`` and ``Vh``: ``k(m+n) + k`` — for a square layer about **twice** a dense
    ``W``. SST saves trainable parameters, gradients and optimizer state, not weight storage. The
    library also keeps which singular index each slot holds (``k`` integers, extra; not in the paper).
    """
    k = min(m, n)
    trainable = rank * (m + n) + k
    return LayerCounts(k * (m + n) + k, trainable, _adam(trainable), k)


@formula("truncated")
def truncated_counts(m: int, n: int, rank: int, **_: Any) -> LayerCounts:
    """``sl.truncate``'s inference layer: ``W ≈ B A`` stored as ``B`` (m × r) and ``A`` (r × n),
    ``r(m+n)`` numbers instead of ``mn``; nothing trains."""
    return LayerCounts(rank * (m + n), 0, 0, 0)


def layer_hyperparameters(layer: nn.Module) -> dict[str, Any]:
    """What the formulas need from an adapted layer: its shape, rank, sparse count, ... .

    Read from the layer (``rank``, ``nnz`` attributes: SVFit chooses its rank per layer) and else
    from the options it was applied with (``layer.spec.config``).
    """
    config = getattr(getattr(layer, "spec", None), "config", {}) or {}
    hyper: dict[str, Any] = {"m": layer.out_features, "n": layer.in_features}
    for key in ("rank", "nnz", "proj_type"):
        value = getattr(layer, key, None)
        if value is None:
            value = config.get(key)
        if value is not None:
            hyper[key] = value if key == "proj_type" else int(value)
    if "nnz" not in hyper and isinstance(config.get("sparsity"), (int, float)):
        # δmn rounded half up, as spectrallab.methods.sltrain sizes its support
        hyper["nnz"] = max(1, int(config["sparsity"] * layer.out_features * layer.in_features + 0.5))
    if hasattr(layer, "svft_gate"):
        hyper["gate"] = layer.svft_gate is not None
    hyper["keeps_initial_factors"] = getattr(layer, "lora_A0", None) is not None
    return hyper


# -- measurement ---------------------------------------------------------------------------------

def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _state_tensors(obj: Any, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor reachable from one optimizer-state entry: dicts, lists, tuples and the
    attributes of plain objects (a projector object holding its matrix), each object once."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield "", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            for sub, t in _state_tensors(value, seen):
                yield (str(key) if not sub else f"{key}.{sub}"), t
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _state_tensors(value, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, nn.Module)):
        yield from _state_tensors(vars(obj), seen)


@dataclass
class Usage:
    """Measured bytes in one scope (the adapted weights of a method, or everything outside them)."""

    parameters: int = 0           # every parameter tensor (frozen + trainable)
    trainable: int = 0            # parameters with requires_grad
    gradients: int = 0            # .grad tensors present
    optimizer_state: int = 0      # optimizer.state tensors, step counters excluded
    buffers: int = 0              # buffer bytes
    buffer_elements: int = 0      # buffer elements (formulas count elements: indices may be int64)


@dataclass
class MethodMemory:
    """One method's adapted layers: the formula (summed over layers) next to the measurement."""

    method: str
    layers: int
    bytes_per_scalar: int
    formula: LayerCounts | None
    measured: Usage
    full_reference: LayerCounts   # `full` training of the same weights, for the "vs full" ratios

    def formula_bytes(self) -> dict[str, int | None]:
        f, b = self.formula, self.bytes_per_scalar
        if f is None:
            return {"parameters": None, "trainable": None, "gradients": None, "optimizer_state": None,
                    "buffer_elements": None}
        return {"parameters": f.weights * b, "trainable": f.trainable * b, "gradients": f.gradients * b,
                "optimizer_state": f.optimizer_states * b, "buffer_elements": f.extra}

    def matches(self) -> dict[str, bool | None]:
        """Per quantity: does the measurement equal the formula exactly (None: nothing to compare)."""
        expected = self.formula_bytes()
        measured = asdict(self.measured)
        return {key: None if value is None else value == measured[key] for key, value in expected.items()}


ROWS = (("parameters", "weights stored as parameters"), ("trainable", "trainable parameters"),
        ("gradients", "gradients"), ("optimizer_state", "optimizer state"),
        ("buffer_elements", "extra buffers (elements)"))


@dataclass
class MemoryReport:
    """Bytes held by a model and its optimizer, with each method's formula alongside.

    All sizes are bytes except ``*_elements``. ``methods`` has one :class:`MethodMemory` per method
    found in the model; ``outside`` is what no formula covers (biases, embeddings, norms, layers no
    method adapted). ``str(report)`` and the notebook display print a table; ``as_dict()`` gives
    plain numbers.
    """

    parameters: int
    trainable_parameters: int
    frozen_parameters: int
    buffers: int
    gradients: int
    optimizer_state: int            # every tensor in optimizer.state, nested ones and step counters included
    optimizer_step_counters: int    # Adam's per-tensor `step` entries (part of optimizer_state)
    cuda_peak: int | None           # torch.cuda.max_memory_allocated on the model's device; None off CUDA
    optimizer: str | None
    methods: dict[str, MethodMemory] = field(default_factory=dict)
    outside: Usage = field(default_factory=Usage)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Parameters + buffers + gradients + optimizer state (activations are not included)."""
        return self.parameters + self.buffers + self.gradients + self.optimizer_state

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total"] = self.total
        for name, method in self.methods.items():
            out["methods"][name]["formula_bytes"] = method.formula_bytes()
            out["methods"][name]["matches"] = method.matches()
        return out

    # -- display -----------------------------------------------------------------------------

    def _summary_rows(self) -> list[tuple[str, str]]:
        rows = [("parameters (all)", _human(self.parameters)),
                ("  trainable", _human(self.trainable_parameters)),
                ("  frozen", _human(self.frozen_parameters)),
                ("buffers", _human(self.buffers)),
                ("gradients (present)", _human(self.gradients)),
                ("optimizer state", _human(self.optimizer_state)
                 + (f" (incl. {_human(self.optimizer_step_counters)} of step counters)"
                    if self.optimizer_step_counters else "")),
                ("total without activations", _human(self.total)),
                ("CUDA peak allocated", _human(self.cuda_peak) if self.cuda_peak is not None else "— (not on CUDA)")]
        return rows

    def _method_rows(self, method: MethodMemory) -> list[tuple[str, str, str, str, str]]:
        expected, matches = method.formula_bytes(), method.matches()
        measured = asdict(method.measured)
        full = method.full_reference
        full_bytes = {"parameters": full.weights, "trainable": full.trainable, "gradients": full.gradients,
                      "optimizer_state": full.optimizer_states}
        rows = []
        for key, label in ROWS:
            value = expected[key]
            shown = "—" if value is None else (f"{value:,}" if key == "buffer_elements" else _human(value))
            got = f"{measured[key]:,}" if key == "buffer_elements" else _human(measured[key])
            check = {True: "=", False: "≠", None: ""}[matches[key]]
            ratio = ""
            if key in full_bytes and full_bytes[key]:
                ratio = f"{measured[key] / (full_bytes[key] * method.bytes_per_scalar):.1%}"
            rows.append((label, shown, got, check, ratio))
        return rows

    def __str__(self) -> str:
        lines = [f"Memory report ({self.optimizer or 'no optimizer'})"]
        lines += [f"  {label:<28} {value}" for label, value in self._summary_rows()]
        for method in self.methods.values():
            title = (f"{method.method}: {method.layers} adapted layer(s), formula vs measured "
                     f"({method.bytes_per_scalar} bytes per scalar; weights only, biases below)")
            lines += ["", title,
                      f"  {'':<30} {'formula':>12} {'measured':>12}    {'vs full':>8}"]
            for label, shown, got, check, ratio in self._method_rows(method):
                lines.append(f"  {label:<30} {shown:>12} {got:>12} {check:>2} {ratio:>8}")
        o = self.outside
        lines += ["", f"outside the formulas (biases, embeddings, norms, other layers): parameters "
                      f"{_human(o.parameters)} (trainable {_human(o.trainable)}), gradients {_human(o.gradients)}, "
                      f"optimizer state {_human(o.optimizer_state)}, buffers {_human(o.buffers)}"]
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"MemoryReport(parameters={self.parameters}, trainable={self.trainable_parameters}, "
                f"gradients={self.gradients}, optimizer_state={self.optimizer_state}, "
                f"methods={list(self.methods)})")

    def _repr_html_(self) -> str:
        esc = html.escape
        cells = "".join(f"<tr><td>{esc(a)}</td><td style='text-align:right'>{esc(b)}</td></tr>"
                        for a, b in self._summary_rows())
        parts = [f"<p><b>Memory report</b> ({esc(self.optimizer or 'no optimizer')})</p>",
                 f"<table>{cells}</table>"]
        for method in self.methods.values():
            head = "".join(f"<th>{h}</th>" for h in ("", "formula", "measured", "", "vs full"))
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                           for row in self._method_rows(method))
            parts.append(f"<p><b>{esc(method.method)}</b>: {method.layers} adapted layer(s), "
                         f"{method.bytes_per_scalar} bytes per scalar</p><table><tr>{head}</tr>{body}</table>")
        o = self.outside
        parts.append(f"<p>Outside the formulas: parameters {_human(o.parameters)}, gradients "
                     f"{_human(o.gradients)}, optimizer state {_human(o.optimizer_state)}.</p>")
        if self.notes:
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>")
        return "".join(parts)


def _human(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _adam_like(optimizer: torch.optim.Optimizer) -> bool:
    """Adam, AdamW and their variants (GaLoreAdamW ...): two moments per (projected) scalar."""
    return "adam" in type(optimizer).__name__.lower()


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> MemoryReport:
    """Measure the bytes of ``model``'s parameters, buffers and gradients and of ``optimizer``'s
    state, and set each adapted layer's paper formula beside them.

    Call it **after** ``loss.backward()`` and ``optimizer.step()`` (at least one: Adam creates its
    state on the first step) and **before** ``optimizer.zero_grad()`` (which frees the gradients).
    The formulas assume Adam/AdamW; with another optimizer the optimizer-state comparison is
    reported but flagged in the notes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"memory_report needs an nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    notes: list[str] = []

    # Which scope each tensor belongs to: an adapted layer's weight (its method's formula) or outside.
    layers = adapted_layers(model)
    if not layers and isinstance(model, AdaptedLinear):
        layers = {"": model}  # memory_report(sl.apply(nn.Linear(...), ...)) on a single adapted layer
    scope: dict[int, str] = {}
    bookkeeping = {id(getattr(layer, name)) for layer in layers.values() for name in layer.state_buffers}
    for layer in layers.values():
        bias = getattr(layer, "bias", None)
        for t in list(layer.parameters()) + list(layer.buffers()):
            if t is not bias:
                scope[id(t)] = layer.method

    usage: dict[str, Usage] = {}

    def bucket(t: torch.Tensor) -> Usage:
        return usage.setdefault(scope.get(id(t), ""), Usage())

    params = list(dict.fromkeys(model.parameters()))  # shared parameters once, in order
    total_params = trainable = gradients = 0
    for p in params:
        u, size = bucket(p), _nbytes(p)
        total_params += size
        u.parameters += size
        if p.requires_grad:
            trainable += size
            u.trainable += size
        if p.grad is not None:
            gradients += _nbytes(p.grad)
            u.gradients += _nbytes(p.grad)
    buffers = 0
    for b in dict.fromkeys(model.buffers()):
        u = bucket(b)
        buffers += _nbytes(b)
        u.buffers += _nbytes(b)
        if id(b) not in bookkeeping:  # clocks and generator states: measured, not compared
            u.buffer_elements += b.numel()

    state_bytes = step_bytes = 0
    if optimizer is not None:
        param_ids = {id(p) for p in params}
        seen: set[int] = set()
        for p, state in optimizer.state.items():
            u = bucket(p)
            for key, t in _state_tensors(state, seen):
                if id(t) in param_ids:       # a reference to the parameter itself costs nothing extra
                    continue
                size = _nbytes(t)
                state_bytes += size
                if key == "step":
                    step_bytes += size
                else:
                    u.optimizer_state += size
        if not optimizer.state:
            notes.append("the optimizer has no state yet: call memory_report after at least one backward() "
                         "and step() (Adam allocates its moments on the first step)")
        if not _adam_like(optimizer):
            notes.append(f"the formulas' optimizer states assume Adam/AdamW (two moments per trained scalar); "
                         f"this optimizer is {type(optimizer).__name__}, so expect the optimizer-state rows to differ")
    else:
        notes.append("no optimizer given: optimizer state not measured")
    if trainable and not gradients:
        notes.append("no gradients present: call memory_report after backward() and before zero_grad() "
                     "(zero_grad(set_to_none=True), the default, frees them)")

    cuda_peak = None
    device = params[0].device if params else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        cuda_peak = int(torch.cuda.max_memory_allocated(device))
        notes.append("CUDA peak = torch.cuda.max_memory_allocated since the last reset_peak_memory_stats(): "
                     "it includes activations and temporaries, which the rows above do not")
    else:
        notes.append("activations are not counted (they live only between forward and backward); on CUDA the "
                     "report adds torch.cuda.max_memory_allocated, which includes them")

    # Formulas, summed per method.
    by_method: dict[str, list[nn.Module]] = {}
    for layer in layers.values():
        by_method.setdefault(layer.method, []).append(layer)
    methods: dict[str, MethodMemory] = {}
    for name, group in by_method.items():
        counts: LayerCounts | None = None
        fn = FORMULAS.get(name)
        full_ref = sum((full_counts(l.out_features, l.in_features) for l in group), LayerCounts(0, 0, 0))
        if fn is None:
            notes.append(f"no memory formula for method {name!r}: measured only (add one with "
                         f"@spectrallab.memory.formula({name!r}))")
        else:
            try:
                counts = sum((fn(**layer_hyperparameters(l)) for l in group), LayerCounts(0, 0, 0))
            except TypeError as err:   # a hyperparameter the formula needs is not recorded on the layer
                notes.append(f"method {name!r}: the formula could not be evaluated ({err}); measured only")
        weight = next((t for l in group for t in l.parameters() if t is not getattr(l, "bias", None)), None)
        methods[name] = MethodMemory(name, len(group), weight.element_size() if weight is not None else 4,
                                     counts, usage.get(name, Usage()), full_ref)
        if counts is not None and not all(v in (True, None) for v in methods[name].matches().values()):
            wrong = [k for k, v in methods[name].matches().items() if v is False]
            notes.append(f"{name}: measured ≠ formula for {', '.join(wrong)} (mixed dtypes, an optimizer "
                         f"other than Adam, or storage the paper does not count)")
    if "galore" in methods:
        notes.append("GaLore shrinks the optimizer state only: its gradients are full size (the same bytes as "
                     "full training of those layers) and so are its activations")
    if not layers:
        notes.append("no adapted layers: nothing to compare with a formula (apply a method to see its formula)")

    return MemoryReport(parameters=total_params, trainable_parameters=trainable,
                        frozen_parameters=total_params - trainable, buffers=buffers, gradients=gradients,
                        optimizer_state=state_bytes, optimizer_step_counters=step_bytes, cuda_peak=cuda_peak,
                        optimizer=None if optimizer is None else type(optimizer).__name__,
                        methods=methods, outside=usage.get("", Usage()), notes=notes)


__all__ = ["memory_report", "MemoryReport", "MethodMemory", "Usage", "LayerCounts", "FORMULAS", "formula",
           "layer_hyperparameters"]
