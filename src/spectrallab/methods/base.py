"""What every method is made of: a registry entry and an adapted layer.

A *method* (LoRA, SST, ...) is a subclass of :class:`Method` registered under a lower-case name
with :func:`register`. It turns one ``nn.Linear`` into an :class:`AdaptedLinear` — a module that
holds the method's parameters and can always say what dense weight it currently represents
(:meth:`AdaptedLinear.effective_weight`). Everything generic — choosing layers, validating, making
``apply`` all-or-nothing, merging, spectra, counting parameters — lives outside the method file, so
a new method is one file and one ``@register``.

Methods that change optimization (SST's resampling, ReLoRA's restarts, GaLore's projection)
override :meth:`Method.attach_optimizer`; ``spectrallab.optimizer`` calls it. They also say so
(:attr:`Method.needs_optimizer_hooks`), so that a layer trained by an optimizer without those hooks
(a plain ``torch.optim.AdamW``, the Hugging Face Trainer's default) warns instead of silently
running a different algorithm (:class:`MissingOptimizerHooksWarning`).
"""

from __future__ import annotations

import math
import warnings
import weakref
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..linalg import all_finite, is_conv1d
from .options import Option, validate, where

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: make a :class:`Method` subclass reachable as ``spectrallab.apply(model, name)``.

    Names are matched case-insensitively: ``@register("MyGate")`` is found as ``"mygate"``,
    ``"MyGate"`` or ``"MYGATE"`` (its canonical name, ``cls.name``, is the lower-case one).

    Fit for notebooks: registering a name again — a re-run cell, ``importlib.reload`` or
    ``%autoreload`` of the module that defines it — *replaces* the earlier definition with a
    warning, so the edited method is what ``apply`` uses from then on. Layers that the earlier
    definition already built keep working: they are instances of the old class and keep their own
    ``spec``.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise TypeError(f"a method's name must be a non-empty string without surrounding spaces, got {name!r}")
    key = name.lower()

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)) or cls is Method:
            raise TypeError(
                f"@register({name!r}) decorates {cls!r}, which is not a subclass of "
                f"spectrallab.Method; a method is a class deriving from Method"
            )
        bare = sorted(option for option, declared in cls.options.items() if not isinstance(declared, Option))
        if bare:
            raise TypeError(
                f"@register({name!r}): {cls.__name__}.options must declare every option as a "
                f"spectrallab.methods.options.Option (kind, default, range or choices, help); "
                f"{', '.join(bare)} {'is' if len(bare) == 1 else 'are'} not"
            )
        earlier = _REGISTRY.get(key)
        if earlier is not None and earlier is not cls:
            warnings.warn(
                f"method {key!r} is registered again: {_qualified(cls)} replaces "
                f"{_qualified(earlier)} (layers it already built keep working)",
                MethodRedefinedWarning,
                stacklevel=2,
            )
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorate


class MethodRedefinedWarning(UserWarning):
    """A method name was registered again (re-run cell, module reload); the new definition wins."""


class MissingOptimizerHooksWarning(UserWarning):
    """A method whose algorithm runs in optimizer hooks is trained by an optimizer without them."""


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registered() -> dict[str, type[Method]]:
    return dict(_REGISTRY)


# -- transformers' Conv1D -------------------------------------------------------------------------
#
# GPT-2 (and OpenAI GPT) compute their projections with `transformers.pytorch_utils.Conv1D`: a
# linear layer that stores its weight transposed (in × out) and computes y = x W + b. Methods are
# written for nn.Linear; `apply` shows them an equivalent nn.Linear (the weight transposed, the same
# bias) and the adapted layer remembers where it came from, so `merge` gives back a Conv1D.
# Recognised by class name and module (`is_conv1d`, in linalg), so spectrallab never imports transformers.


def as_linear(layer: nn.Module) -> nn.Linear:
    """``layer`` itself if it is an ``nn.Linear``; for a ``Conv1D``, an ``nn.Linear`` computing the
    same function: its weight (out × in) is a contiguous transposed copy, its bias the same Parameter."""
    if not is_conv1d(layer):
        return layer
    n_in, n_out = layer.weight.shape
    view = nn.Linear(n_in, n_out, bias=layer.bias is not None, device="meta")  # meta: no allocation
    # A copy, not the strided view `weight.T`: optimizers, DDP buckets and FSDP expect contiguous
    # parameters, and the Conv1D is dropped once its replacement is in place.
    view.weight = nn.Parameter(layer.weight.detach().T.contiguous(), requires_grad=layer.weight.requires_grad)
    view.bias = layer.bias
    return view


def conv1d_from_linear(linear: nn.Linear, conv_class: type[nn.Module]) -> nn.Module:
    """A ``conv_class`` (transformers' Conv1D) computing what ``linear`` computes."""
    with torch.device("meta"):  # Conv1D(nf, nx) draws a random weight: skip that work
        conv = conv_class(linear.out_features, linear.in_features)
    conv.weight = nn.Parameter(linear.weight.detach().T.contiguous())
    bias = (
        linear.bias
        if linear.bias is not None
        else torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)
    )
    conv.bias = nn.Parameter(bias.detach())
    return conv


@torch.no_grad()
def reset_linear_(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``nn.Linear.reset_parameters`` on bare tensors: Kaiming-uniform (a = √5) weight, U(±1/√in) bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)


@dataclass(frozen=True)
class LayerCounts:
    """Scalar counts for one adapted weight (bias excluded), as the method's paper counts them.

    ``weights``: scalars stored as parameters for the weight (frozen + trainable); ``trainable``: of
    which trained (each has a gradient of its size); ``optimizer_states``: Adam's state (two moments
    per trained scalar unless the method projects); ``extra``: non-parameter storage the method needs
    (index sets, frozen factors kept as buffers), counted in elements of whatever dtype it uses,
    or None where the formula does not model it. An adapted layer returns its own from
    :meth:`AdaptedLinear.paper_counts`; :func:`spectrallab.memory_report` sets them beside the bytes
    it measures.
    """

    weights: int
    trainable: int
    optimizer_states: int
    extra: int | None = 0

    @classmethod
    def adam(cls, weights: int, trainable: int, extra: int | None = 0) -> LayerCounts:
        """Counts for a layer trained with Adam: two moments per trained scalar."""
        return cls(weights, trainable, 2 * trainable, extra)

    @classmethod
    def dense(cls, m: int, n: int) -> LayerCounts:
        """Dense training of an ``m × n`` weight: ``mn`` weights, all trained, Adam ``2mn``."""
        return cls.adam(m * n, m * n)

    def __add__(self, other: LayerCounts) -> LayerCounts:
        extra = None if self.extra is None or other.extra is None else self.extra + other.extra
        return LayerCounts(
            self.weights + other.weights,
            self.trainable + other.trainable,
            self.optimizer_states + other.optimizer_states,
            extra,
        )

    @property
    def gradients(self) -> int:
        """Gradients are as large as what trains (GaLore: the full ``mn``)."""
        return self.trainable


class AdaptedLinear(nn.Module):
    """A linear layer rewritten by a method: ``y = x W'ᵀ + b`` for the method's effective ``W'``.

    Subclasses keep the frozen base weight (when they have one) as a Parameter with
    ``requires_grad=False``: it moves with ``.to()`` and is saved in ``state_dict`` like PEFT's base
    layer. They deliberately do **not** contain an ``nn.Linear`` submodule, so that "every
    ``nn.Linear`` in the model" never reaches inside an adapted layer.
    """

    method: ClassVar[str] = "?"
    # The class of the layer this one replaced, when it is not nn.Linear (transformers' Conv1D);
    # `apply` sets it, `to_plain` rebuilds it.
    origin: type[nn.Module] | None = None
    # Buffers that hold the method's bookkeeping — clocks, random-generator states — rather than
    # storage its paper counts (the memory report keeps them out of the formula comparison, as it
    # does Adam's step counters). They are persistent, so a checkpoint carries them.
    state_buffers: ClassVar[tuple[str, ...]] = ()
    # A sentence the memory report adds when this method is present (what its formula hides), or None.
    memory_note: ClassVar[str | None] = None

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features

    def __setstate__(self, state: dict) -> None:
        # A deep copy or an unpickled model is a new set of layers: watch them as `build` did.
        super().__setstate__(state)
        spec = self.__dict__.get("spec")
        if spec is not None and spec.needs_optimizer_hooks:
            _watch(self)

    def effective_weight(self) -> torch.Tensor:
        """The dense ``out × in`` weight this layer applies now (what ``merge`` writes)."""
        raise NotImplementedError

    def paper_counts(self) -> LayerCounts | None:
        """What the method's paper says this layer stores and trains (:class:`LayerCounts`), for
        :func:`spectrallab.memory_report`, which measures the bytes and compares. The formula is the
        method's, so it lives in the method's file, cited there. None (the default): no formula, the
        report measures only."""
        return None

    @property
    def effective_bias(self) -> torch.Tensor | None:
        return getattr(self, "bias", None)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the same function (used by ``spectrallab.merge``)."""
        weight = self.effective_weight().detach()
        bias = self.effective_bias
        linear = nn.Linear(
            self.in_features, self.out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias.detach())
        return linear

    def to_plain(self) -> nn.Module:
        """The plain layer this one replaced — ``nn.Linear``, or transformers' ``Conv1D`` for a layer
        built from one — with the same function (what ``spectrallab.merge`` puts back)."""
        linear = self.to_linear()
        return linear if self.origin is None else conv1d_from_linear(linear, self.origin)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, method={self.method!r}"


class Method:
    """A registered way of adapting ``nn.Linear`` layers.

    Class attributes a method sets:

    * ``options``: every keyword it accepts, as :class:`~.options.Option` declarations (type,
      default, allowed range or choices, one line of help). Validation, error messages, widget
      controls and option tables are generated from them; see :mod:`spectrallab.methods.options`.
    * ``freezes_others``: fine-tuning methods freeze every parameter outside the adapted layers
      (embeddings, norms, biases of untouched layers); pre-training methods leave them trainable.
      ``apply(..., freeze_others=...)`` overrides it.
    """

    name: ClassVar[str] = "?"
    options: ClassVar[dict[str, Option]] = {}
    freezes_others: ClassVar[bool] = True
    # Why the initialization needs the weight's *values* (a phrase for error messages), or None when
    # its shape is enough. See `needs_weight_values`.
    init_reads_weight: ClassVar[str | None] = "its initialization was not declared to need only the weight's shape"
    # What runs in the hooks `attach_optimizer` installs (a phrase for the warning), or None when the
    # method's layers train correctly under any optimizer. See `_check_optimizer_hooks`.
    needs_optimizer_hooks: ClassVar[str | None] = None
    _warned_missing_hooks: bool = False  # set on the instance: one warning per apply

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise TypeError(
                f"method {self.name!r} got unknown option(s) {', '.join(unknown)}; its options are: {allowed}"
            )
        self.config = {**self.defaults(), **options}
        self.layer_names: list[str] = []  # the layers `build` made, to name them in messages

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option's default value."""
        return {name: option.default for name, option in cls.options.items()}

    @classmethod
    def option_choices(cls, option: str) -> list[Any] | None:
        """The allowed values of a categorical option (e.g. ``init``), or None if it is not one.

        Read from the declaration, so widgets build their dropdowns with no method-specific code.
        """
        declared = cls.options.get(option)
        return declared.allowed_choices() if declared is not None and declared.kind == "choice" else None

    def validate_options(self, layer_names: Sequence[str]) -> None:
        """Check the options against their declarations, then :meth:`check_options`; once per ``apply``,
        before any layer is looked at. ``layer_names`` (the targets) are named in the messages."""
        validate(self.options, self.config, layer_names)
        self.check_options(where(layer_names))

    def check_options(self, where: str) -> None:
        """Constraints between options that no single declaration states (a warm-up shorter than its
        period, "rank or energy, not both"). Raise ``ValueError``/``TypeError`` starting with ``where``.
        Default: none."""

    def needs_weight_values(self) -> str | None:
        """Why this method cannot start from a meta-device layer (shapes, no values), or None if it can.

        ``apply`` refuses a meta-device layer when this is not None, naming the layer and the reason.
        A method that returns None gives its layer a ``reset_parameters()`` that initializes every
        tensor the layer owns, so ``model.to_empty(device=...)`` then ``reset_parameters()`` (and,
        for fine-tuning, loading the pretrained base weights) gives a valid model. Default: the
        class attribute ``init_reads_weight`` (a method that says nothing is assumed to read W).
        """
        return self.init_reads_weight

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        """Raise ``ValueError``/``TypeError`` if this method cannot adapt ``linear``: only what depends on
        the layer (a rank bounded by its shape, a finite weight for an SVD); the options themselves were
        validated once already (:meth:`validate_options`).

        Called for every target before any layer is changed, so ``apply`` is all-or-nothing.
        """

    def adapt(self, layer_name: str, linear: nn.Linear) -> AdaptedLinear:
        """Build the replacement for ``linear``. Must not modify ``linear`` itself."""
        raise NotImplementedError

    def build(self, layer_name: str, linear: nn.Linear, origin: type[nn.Module] | None = None) -> AdaptedLinear:
        """:meth:`adapt`, plus what every adapted layer records about its making: ``spec`` (this
        method instance, whose hooks ``spectrallab.optimizer`` installs), ``method`` (the registered
        name) and ``origin`` (the class it replaced when not ``nn.Linear``: ``merge`` rebuilds it)."""
        layer = self.adapt(layer_name, linear)
        layer.spec = self
        layer.method = self.name
        layer.origin = origin
        self.layer_names.append(layer_name)
        if self.needs_optimizer_hooks:
            _watch(layer)
        return layer

    def install_optimizer_hooks(self, optimizer: torch.optim.Optimizer, layers: dict[str, AdaptedLinear]) -> None:
        """What ``spectrallab.optimizer`` calls: :meth:`attach_optimizer`, then record on ``optimizer``
        that these layers have their method's hooks there, so its steps do not warn about them
        (:class:`MissingOptimizerHooksWarning`). Methods override ``attach_optimizer``, not this."""
        self.attach_optimizer(optimizer, layers)
        hooked = getattr(optimizer, "_spectrallab_hooked_layers", set())
        optimizer._spectrallab_hooked_layers = hooked | {id(layer) for layer in layers.values()}

    def optimizer_runs_method(self, optimizer: torch.optim.Optimizer) -> bool:
        """True when ``optimizer`` itself carries this method's algorithm, hooks or not (GaLore's own
        :class:`~.galore.GaLoreAdamW`, built by hand): then training with it does not warn. Default: False."""
        return False

    def fsdp_refusal(self) -> str | None:
        """Why this method cannot train under FSDP2 (:func:`spectrallab.fsdp.shard`), a phrase, or None.

        FSDP2 splits every parameter into per-process shards (DTensors) and gathers the whole of
        each only for the forward and backward pass; so a method that is all forward pass trains
        exactly as in one process. What runs outside them — the hooks of :meth:`attach_optimizer`,
        the optimizer of :meth:`optimizer_groups` — sees shards, and anything there that needs a
        whole matrix (an SVD, a merge, a column norm) must gather it (:mod:`spectrallab.shards`).
        Default: None for a method that overrides neither; otherwise a refusal, until the method
        overrides this to say its optimizer-side code handles shards (SST, GaLore, SORSA do).
        ``shard`` calls it for every method on the model before it shards anything.
        """
        cls = type(self)
        if cls.attach_optimizer is Method.attach_optimizer and cls.optimizer_groups is Method.optimizer_groups:
            return None
        return "its optimizer hooks were not declared to work on sharded parameters (Method.fsdp_refusal)"

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, layers: dict[str, AdaptedLinear]) -> None:
        """Install the method's optimizer behaviour (hooks on ``optimizer``). Default: none.

        Whatever the hooks must remember between steps (a step counter, a period index, a random
        generator) belongs in the layers' persistent buffers (:func:`counter`, :func:`drawing`; list
        them in ``state_buffers``), never in the hooks' closures: then ``model.state_dict()`` +
        ``optimizer.state_dict()`` resume the run exactly, and an optimizer built again mid-run
        continues the schedule. Input checks that must run before anything changes go through
        :func:`spectrallab.optim_hooks.add_step_check`.
        """

    @classmethod
    def period_options(cls, period: int) -> dict[str, Any] | None:
        """Options that make the method do its periodic work every ``period`` steps, or None.

        Methods with a period (ReLoRA's restarts, GaLore's projection updates, SST's resampling)
        return their own option names with consistent companions (a warm-up shorter than the
        period), so a widget can offer one "period" knob for all of them. Default: None.
        """
        return None

    def optimizer_groups(
        self, layers: dict[str, AdaptedLinear], optimizer_class: type[torch.optim.Optimizer]
    ) -> tuple[type[torch.optim.Optimizer], list[dict[str, Any]]]:
        """Param groups with method-specific options, and the optimizer class that can honour them.

        ``spectrallab.optimizer`` calls this *before* it builds the optimizer (``attach_optimizer``
        runs after), once per method instance, with that method's layers and the class asked for —
        the user's choice, or what a previous method on the same model returned. Return
        ``(optimizer_class, groups)``:

        * ``groups``: dicts ``{"params": [...], <option>: value, ...}``. Their options override the
          optimizer's defaults (the user's keywords) for those parameters only; every trainable
          parameter in no group lands in one ordinary group. Frozen parameters are dropped, and a
          parameter may belong to one group only.
        * ``optimizer_class``: the class to build. A method that needs its own optimizer (GaLore's
          projected Adam) returns it, and raises ``ValueError`` naming its layers when the class asked
          for cannot do what it needs (``optimizer="sgd"`` for GaLore).

        Default: ``(optimizer_class, [])`` — the optimizer asked for, no special groups.
        """
        return optimizer_class, []

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


# -- no silent skip: layers trained without their method's optimizer hooks ----------------------
#
# SST's resampling, ReLoRA's restarts and GaLore's projection run in step hooks that
# `spectrallab.optimizer` installs. An optimizer built another way (`torch.optim.AdamW(model.parameters())`,
# the Hugging Face Trainer's default) trains the same parameters without them: no error, just another
# algorithm. So the layers of such a method are watched, and the first step of any optimizer that
# updates one of them without its hooks warns, once per `apply`, naming the layers and the fix.
#
# The check sits on the optimizer step (torch's global step pre-hook), not in the layers' forward: a
# forward cannot tell a training step from a gradient check or from a forward run before the
# optimizer was built, and the parameters' in-place version counters, which could tell, are not
# bumped by torch's fused AdamW (the Hugging Face Trainer's default).

_WATCHED: weakref.WeakSet[AdaptedLinear] = weakref.WeakSet()  # layers whose method needs hooks
_STEP_HOOK: list = []  # the handle of the global step pre-hook, once registered


def _watch(layer: AdaptedLinear) -> None:
    _WATCHED.add(layer)
    if not _STEP_HOOK:  # registered at the first such layer: a process without one pays nothing
        _STEP_HOOK.append(register_optimizer_step_pre_hook(_check_optimizer_hooks))


def _check_optimizer_hooks(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    """Global step pre-hook: at an optimizer's first step, warn for each method whose watched layers
    this optimizer updates without their hooks. Later steps of the same optimizer return at once."""
    if not _WATCHED or getattr(optimizer, "_spectrallab_hooks_checked", False):
        return
    optimizer._spectrallab_hooks_checked = True
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    hooked = getattr(optimizer, "_spectrallab_hooked_layers", set())
    missing: dict[int, Method] = {}
    for layer in list(_WATCHED):
        spec = layer.spec
        if spec._warned_missing_hooks or id(layer) in hooked or spec.optimizer_runs_method(optimizer):
            continue
        if any(id(p) in updated for p in layer.parameters() if p.requires_grad):
            missing[id(spec)] = spec
    for spec in missing.values():
        spec._warned_missing_hooks = True
        names = spec.layer_names
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6 else "")
        warnings.warn(
            f"method {spec.name!r} (layers {shown}) is trained by an optimizer without spectrallab's "
            f"optimizer hooks ({type(optimizer).__name__}, not built by spectrallab.optimizer), so "
            f"this skips {spec.needs_optimizer_hooks}. Build the optimizer with "
            "spectrallab.optimizer(model, lr=...) (a torch.optim optimizer: LR schedulers and "
            "state_dict work as usual); with the Hugging Face Trainer pass "
            "optimizers=(spectrallab.optimizer(model, lr=...), None)",
            MissingOptimizerHooksWarning,
            stacklevel=3,
        )


# -- shared validation helpers: one wording for every method ------------------------------------


def check_rank(layer_name: str, linear: nn.Linear, rank: Any) -> int:
    """``rank`` must be an int in [1, min(out_features, in_features)]."""
    limit = min(linear.out_features, linear.in_features)
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"layer {layer_name!r}: rank must be an int in [1, {limit}], got {rank!r}")
    if not 1 <= rank <= limit:
        raise ValueError(
            f"layer {layer_name!r} ({linear.out_features}×{linear.in_features}): "
            f"rank={rank} is outside the allowed range [1, {limit}] = [1, min(out, in)]"
        )
    return rank


def check_finite_weight(layer_name: str, weight: torch.Tensor) -> None:
    """Non-finite weights make SVD/QR fail deep inside LAPACK; say which layer instead."""
    if not all_finite(weight.detach()):
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(
            f"layer {layer_name!r}: weight has {bad} non-finite value(s) (NaN or inf); an SVD needs all values finite"
        )


def resolve_seed(seed: int | None) -> int:
    """``seed`` itself, or (None) a seed drawn from torch's global generator — rank 0's draw when a
    ``torch.distributed`` process group is initialized.

    The seed starts streams that live in buffers (ReLoRA's re-drawn ``A`` and pruning masks, SLTrain's
    support). DDP copies rank 0's buffers to the other ranks only when it syncs them at construction
    (not with ``broadcast_buffers=False``), and FSDP never does, while ranks commonly seed their
    global generators differently (``torch.manual_seed(seed + rank)``, for data order and dropout).
    So every rank draws (its global generator advances as in a single process) and then takes rank
    0's seed: the layers' streams agree on every rank by construction. This is a collective: under an
    initialized process group every rank calls ``apply`` (as every rank builds its model for DDP or
    FSDP); a process alone (world size 1, or no process group) communicates nothing.
    """
    if seed is not None:
        return int(seed)
    drawn = int(torch.randint(0, 1 << 62, (1,)))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [drawn]
        dist.broadcast_object_list(box, src=0)  # picks the device the backend needs (CUDA for NCCL)
        drawn = int(box[0])
    return drawn


def layer_generator(seed: int, layer_name: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the layer name (stable across runs, unlike ``hash``):
    runs are reproducible and layers draw independently."""
    mixed = (seed * 1_000_003 + zlib.crc32(layer_name.encode())) % (1 << 63)
    return torch.Generator().manual_seed(mixed)


# -- method state that must survive a checkpoint -------------------------------------------------
#
# Resume is the torch way: ``model.state_dict()`` + ``optimizer.state_dict()``. So a method keeps
# its clock (steps taken, periods done) and its random stream as *persistent buffers* of its
# layers — never in a Python attribute or a hook's closure, which neither state dict sees and
# which a rebuilt optimizer would start again from zero. The buffer is the only copy: every draw
# reads the generator state from it and writes the advanced state back.


def counter(value: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """A 0-d int64 tensor: a step or event counter stored as a buffer (unaffected by ``.half()``)."""
    return torch.tensor(int(value), dtype=torch.int64, device=device)


def generator_state(generator: torch.Generator) -> torch.Tensor:
    """``generator``'s state as a uint8 tensor (``torch.Generator.get_state``), for a buffer."""
    return generator.get_state().clone()


@contextmanager
def drawing(buffer: torch.Tensor) -> Iterator[torch.Generator]:
    """A CPU generator in the state stored in ``buffer``; on exit its advanced state is written back.

    ``with drawing(layer.rng_state) as g: torch.randperm(n, generator=g)`` — the stream lives in the
    state dict, so a loaded checkpoint continues it exactly.
    """
    generator = torch.Generator()
    generator.set_state(buffer.detach().to("cpu", torch.uint8))
    yield generator
    buffer.copy_(generator.get_state())


def frozen(tensor: torch.Tensor) -> nn.Parameter:
    """A non-trainable Parameter sharing ``tensor``'s storage (moves with the module, is saved)."""
    return nn.Parameter(tensor.detach(), requires_grad=False)
