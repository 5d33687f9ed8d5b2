"""Where the memory of a training step goes — measured, next to what each paper's formula promises.

``memory_report(model, optimizer)`` counts the bytes a training step holds on to:

* **parameters** — every parameter tensor (shared ones once), split into trainable and frozen;
* **buffers** — non-parameter tensors of the model (index sets, frozen factors, shared random matrices);
* **gradients** — the ``.grad`` tensors *present* (only trainable parameters get one);
* **optimizer state** — every tensor in ``optimizer.state[p]``, nested ones included (a projection
  matrix kept inside a projector object, as GaLore does), with Adam's per-tensor ``step`` counters
  reported separately because no paper counts them;
* on CUDA, ``torch.cuda.max_memory_allocated`` — the only number here that includes activations.

Tensors that live only within a forward and backward are activations, not state, and only that
CUDA peak sees them. Two belong to methods, each ``m × n``: SST's dense ``W`` when the layer keeps
it for backward (``keep_weight``, from 8·m tokens on, where it is at most an eighth of the input the
layer saves anyway), and the merged ``W₀ + (α/r)BA`` of LoRA's merged path on long batches, formed
in the layer's forward and again in its backward, never kept between them. On the CPU,
``benchmarks/sst_memory.py`` measures a whole step's peak.

It measures what exists, so **call it after at least one** ``loss.backward(); opt.step()`` **and
before** ``opt.zero_grad()``: Adam allocates its moments lazily on the first step, and
``zero_grad()`` (``set_to_none=True``, the default) frees the gradients. Called too early, the report
says so in its notes instead of reporting zeros silently::

    opt = sl.optimizer(model, lr=1e-3)
    loss_fn(model(x), y).backward(); opt.step()
    report = sl.memory_report(model, opt)    # before opt.zero_grad()
    print(report); report.as_dict()          # a table; plain numbers

**Formulas.** Next to the measurement, each adapted layer is counted with its method's formula —
the layer's :meth:`~spectrallab.AdaptedLinear.paper_counts`, written in the method's own file beside
the layer it counts and citing its paper — for one ``m × n`` weight (``m = out_features``,
``n = in_features``, ``k = min(m, n)``, rank ``r``), as scalar counts (:class:`LayerCounts`). For
example LoRA stores ``mn + r(m+n)`` weights and trains ``r(m+n)`` (Adam: ``2r(m+n)``); SST stores all
of ``U``, ``Σ``, ``Vh`` (``k(m+n) + k``) and trains ``r(m+n) + k``; GaLore trains all ``mn`` but keeps
``min(m,n)·r + 2·max(m,n)·r`` of optimizer state. :func:`formula_table` lists every registered
method's counts for one shape. Gradients are always as large as the trainable part — for GaLore that
is the **full** ``mn``: the report keeps that visible.

The formulas cover the adapted weight matrices only (the papers count ``W``). Biases, embeddings,
norms and layers no method touched are measured in a separate "outside the formulas" row, so for
every method present the comparison *formula = measured* is exact (float32: 4 bytes per scalar),
and a mismatch means the implementation stores something its paper does not count. A layer with
no formula (a method you registered without ``paper_counts``) is reported measured-only, with a
note saying so. This module measures and renders; it knows no method by name.

Choices where the papers leave room (each formula's docstring has the details):

* Adam's ``step`` counters (one scalar tensor per parameter) are measured but kept out of the
  comparison: no paper counts them. So are a method's bookkeeping buffers
  (``AdaptedLinear.state_buffers``: step counters and random-generator states, kept in the model so
  a checkpoint resumes exactly): their bytes are in the measured buffers.
* Index sets (a sparse support, a pattern) are counted in elements, because their width (int64
  here) is an implementation choice; their bytes are in the measured buffers.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .apply import adapted_layers, apply
from .methods.base import AdaptedLinear, LayerCounts, registered


def formula_table(m: int, n: int, **options) -> dict[str, LayerCounts | None]:
    """Every registered method's paper counts for one ``m × n`` weight, applied with ``options``
    where the method takes them (a rank, ...): built from each method's own ``paper_counts``, so a
    newly registered method appears with no edit here. None where a method has no formula or
    cannot adapt that shape with those options."""
    table: dict[str, LayerCounts | None] = {}
    for name, cls in sorted(registered().items()):
        own = {k: v for k, v in options.items() if k in cls.options}
        try:
            layer = apply(nn.Linear(n, m), name, **own)
        except (TypeError, ValueError):
            table[name] = None
            continue
        table[name] = layer.paper_counts()
    return table


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

    parameters: int = 0  # every parameter tensor (frozen + trainable)
    trainable: int = 0  # parameters with requires_grad
    gradients: int = 0  # .grad tensors present
    optimizer_state: int = 0  # optimizer.state tensors, step counters excluded
    buffers: int = 0  # buffer bytes
    buffer_elements: int = 0  # buffer elements (formulas count elements: indices may be int64)


@dataclass
class MethodMemory:
    """One method's adapted layers: the formula (summed over layers) next to the measurement."""

    method: str
    layers: int
    bytes_per_scalar: int
    formula: LayerCounts | None
    measured: Usage
    full_reference: LayerCounts  # `full` training of the same weights, for the "vs full" ratios

    def formula_bytes(self) -> dict[str, int | None]:
        f, b = self.formula, self.bytes_per_scalar
        if f is None:
            return {
                "parameters": None,
                "trainable": None,
                "gradients": None,
                "optimizer_state": None,
                "buffer_elements": None,
            }
        return {
            "parameters": f.weights * b,
            "trainable": f.trainable * b,
            "gradients": f.gradients * b,
            "optimizer_state": f.optimizer_states * b,
            "buffer_elements": f.extra,
        }

    def matches(self) -> dict[str, bool | None]:
        """Per quantity: does the measurement equal the formula exactly (None: nothing to compare)."""
        expected = self.formula_bytes()
        measured = asdict(self.measured)
        return {key: None if value is None else value == measured[key] for key, value in expected.items()}


ROWS = (
    ("parameters", "weights stored as parameters"),
    ("trainable", "trainable parameters"),
    ("gradients", "gradients"),
    ("optimizer_state", "optimizer state"),
    ("buffer_elements", "extra buffers (elements)"),
)


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
    optimizer_state: int  # every tensor in optimizer.state, nested ones and step counters included
    optimizer_step_counters: int  # Adam's per-tensor `step` entries (part of optimizer_state)
    cuda_peak: int | None  # torch.cuda.max_memory_allocated on the model's device; None off CUDA
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
        rows = [
            ("parameters (all)", _human(self.parameters)),
            ("  trainable", _human(self.trainable_parameters)),
            ("  frozen", _human(self.frozen_parameters)),
            ("buffers", _human(self.buffers)),
            ("gradients (present)", _human(self.gradients)),
            (
                "optimizer state",
                _human(self.optimizer_state)
                + (
                    f" (incl. {_human(self.optimizer_step_counters)} of step counters)"
                    if self.optimizer_step_counters
                    else ""
                ),
            ),
            ("total without activations", _human(self.total)),
            ("CUDA peak allocated", _human(self.cuda_peak) if self.cuda_peak is not None else "— (not on CUDA)"),
        ]
        return rows

    def _method_rows(self, method: MethodMemory) -> list[tuple[str, str, str, str, str]]:
        expected, matches = method.formula_bytes(), method.matches()
        measured = asdict(method.measured)
        full = method.full_reference
        full_bytes = {
            "parameters": full.weights,
            "trainable": full.trainable,
            "gradients": full.gradients,
            "optimizer_state": full.optimizer_states,
        }
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
            title = (
                f"{method.method}: {method.layers} adapted layer(s), formula vs measured "
                f"({method.bytes_per_scalar} bytes per scalar; weights only, biases below)"
            )
            lines += ["", title, f"  {'':<30} {'formula':>12} {'measured':>12}    {'vs full':>8}"]
            for label, shown, got, check, ratio in self._method_rows(method):
                lines.append(f"  {label:<30} {shown:>12} {got:>12} {check:>2} {ratio:>8}")
        o = self.outside
        lines += [
            "",
            f"outside the formulas (biases, embeddings, norms, other layers): parameters "
            f"{_human(o.parameters)} (trainable {_human(o.trainable)}), gradients {_human(o.gradients)}, "
            f"optimizer state {_human(o.optimizer_state)}, buffers {_human(o.buffers)}",
        ]
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"MemoryReport(parameters={self.parameters}, trainable={self.trainable_parameters}, "
            f"gradients={self.gradients}, optimizer_state={self.optimizer_state}, "
            f"methods={list(self.methods)})"
        )

    def _repr_html_(self) -> str:
        esc = html.escape
        cells = "".join(
            f"<tr><td>{esc(a)}</td><td style='text-align:right'>{esc(b)}</td></tr>" for a, b in self._summary_rows()
        )
        parts = [f"<p><b>Memory report</b> ({esc(self.optimizer or 'no optimizer')})</p>", f"<table>{cells}</table>"]
        for method in self.methods.values():
            head = "".join(f"<th>{h}</th>" for h in ("", "formula", "measured", "", "vs full"))
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in self._method_rows(method)
            )
            parts.append(
                f"<p><b>{esc(method.method)}</b>: {method.layers} adapted layer(s), "
                f"{method.bytes_per_scalar} bytes per scalar</p><table><tr>{head}</tr>{body}</table>"
            )
        o = self.outside
        parts.append(
            f"<p>Outside the formulas: parameters {_human(o.parameters)}, gradients "
            f"{_human(o.gradients)}, optimizer state {_human(o.optimizer_state)}.</p>"
        )
        if self.notes:
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>")
        return "".join(parts)


def _human(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
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
                if id(t) in param_ids:  # a reference to the parameter itself costs nothing extra
                    continue
                size = _nbytes(t)
                state_bytes += size
                if key == "step":
                    step_bytes += size
                else:
                    u.optimizer_state += size
        if not optimizer.state:
            notes.append(
                "the optimizer has no state yet: call memory_report after at least one backward() "
                "and step() (Adam allocates its moments on the first step)"
            )
        if not _adam_like(optimizer):
            notes.append(
                f"the formulas' optimizer states assume Adam/AdamW (two moments per trained scalar); "
                f"this optimizer is {type(optimizer).__name__}, so expect the optimizer-state rows to differ"
            )
    else:
        notes.append("no optimizer given: optimizer state not measured")
    if trainable and not gradients:
        notes.append(
            "no gradients present: call memory_report after backward() and before zero_grad() "
            "(zero_grad(set_to_none=True), the default, frees them)"
        )

    cuda_peak = None
    device = params[0].device if params else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        cuda_peak = int(torch.cuda.max_memory_allocated(device))
        notes.append(
            "CUDA peak = torch.cuda.max_memory_allocated since the last reset_peak_memory_stats(): "
            "it includes activations and temporaries, which the rows above do not"
        )
    else:
        notes.append(
            "activations are not counted (they live only between forward and backward); on CUDA the "
            "report adds torch.cuda.max_memory_allocated, which includes them"
        )

    # Formulas, summed per method.
    by_method: dict[str, list[nn.Module]] = {}
    for layer in layers.values():
        by_method.setdefault(layer.method, []).append(layer)
    methods: dict[str, MethodMemory] = {}
    for name, group in by_method.items():
        full_ref = sum(
            (LayerCounts.dense(layer.out_features, layer.in_features) for layer in group), LayerCounts(0, 0, 0)
        )
        per_layer = [layer.paper_counts() for layer in group]
        counts: LayerCounts | None = None
        if any(c is None for c in per_layer):
            notes.append(
                f"no memory formula for method {name!r}: measured only (give its layer a "
                f"paper_counts() method returning spectrallab.memory.LayerCounts)"
            )
        else:
            counts = sum(per_layer, LayerCounts(0, 0, 0))
        weight = next((t for layer in group for t in layer.parameters() if t is not getattr(layer, "bias", None)), None)
        methods[name] = MethodMemory(
            name,
            len(group),
            weight.element_size() if weight is not None else 4,
            counts,
            usage.get(name, Usage()),
            full_ref,
        )
        if counts is not None and not all(v in (True, None) for v in methods[name].matches().values()):
            wrong = [k for k, v in methods[name].matches().items() if v is False]
            notes.append(
                f"{name}: measured ≠ formula for {', '.join(wrong)} (mixed dtypes, an optimizer "
                f"other than Adam, or storage the paper does not count)"
            )
    for group in by_method.values():  # what a method's own file says a reader should know
        note = getattr(group[0], "memory_note", None)
        if note:
            notes.append(note)
    if not layers:
        notes.append("no adapted layers: nothing to compare with a formula (apply a method to see its formula)")

    return MemoryReport(
        parameters=total_params,
        trainable_parameters=trainable,
        frozen_parameters=total_params - trainable,
        buffers=buffers,
        gradients=gradients,
        optimizer_state=state_bytes,
        optimizer_step_counters=step_bytes,
        cuda_peak=cuda_peak,
        optimizer=None if optimizer is None else type(optimizer).__name__,
        methods=methods,
        outside=usage.get("", Usage()),
        notes=notes,
    )


__all__ = ["memory_report", "MemoryReport", "MethodMemory", "Usage", "LayerCounts", "formula_table"]
