"""Adapters in and out of Hugging Face PEFT: ``save_peft`` writes a PEFT LoRA adapter, ``load_peft`` reads one.

    import spectrallab as sl
    export = sl.save_peft(model, "adapter/")        # adapter_model.safetensors + adapter_config.json
    export.ranks                                    # {"blocks.0.fc1": 16, ...}: the rank each layer needed
    peft_model = PeftModel.from_pretrained(original_model, "adapter/")   # the same outputs
    model = sl.load_peft(plain_model, "adapter/")   # a PEFT LoRA / rsLoRA / DoRA adapter as sl's lora / dora

**What PEFT gets.** An adapter is a change to a model the receiver already has: the *original*
pretrained weights, before ``sl.apply``. PEFT's LoRA (``peft_type="LORA"``) computes, per target
``nn.Linear`` (or transformers' ``Conv1D``, stored transposed: ``fan_in_fan_out``)::

    W' = W + s · B A                              s = lora_alpha / r   (use_rslora: lora_alpha / √r)
    W' = m ⊙ (W + s·BA) / ‖W + s·BA‖_row          with use_dora (m = lora_magnitude_vector)

with ``lora_A.weight = A`` (r × in) and ``lora_B.weight = B`` (out × r) saved under
``base_model.model.<module>.`` (PEFT drops the adapter name ``default`` from saved keys). Every
method whose update is low rank on the original W is written this way, exactly, by the layer's own
``as_lora()`` (one small method in each method file), at the rank it needs:

=================  =====================================  ==============================================
method             rank written                           factors (on the original W)
=================  =====================================  ==============================================
lora, ffa_lora     r (alpha, rslora as configured)        A, B themselves
dora               r (or 2r with an SVD/QR init), DoRA    A, B, the magnitude
pissa, milora,     2r                                     ``s(BA − B₀A₀) = s·[B | B₀][A ; −A₀]``
olora              (the init moved ``s·B₀A₀`` out of W)
sorsa              2r, scale 1                            ``[B diag(S) | −B₀ diag(S₀)] [A ; A₀]``
loraxs             r (its alpha)                          ``B' = B R``, ``A' = A`` (frozen SVD factors)
svfit              r of each layer (energy may vary it)   ``B' = U_r diag(σ − σ_r)``, ``A' = Vh_r``
vera               r, scale 1                             ``B' = diag(λ_b) B_m diag(λ_d)``, ``A' = A_n``
=================  =====================================  ==============================================

A rank above ``min(out, in)`` (2r on a narrow layer, VeRA's r on a small one) is never written:
such a layer's ``ΔW`` is written as ``I · ΔW`` on its narrow side, rank ``min(out, in)`` (exact, no
SVD) — so ``load_peft`` (whose LoRA needs rank ≤ min(out, in)) reads every export back.

PEFT's config has one ``r`` and one ``lora_alpha``; layers that differ get ``rank_pattern`` /
``alpha_pattern`` entries (checked against PEFT's own matching rule before anything is written).
``use_rslora`` is global too: it is written True only when every layer is an rsLoRA layer of its
own rank; otherwise each layer's scale ``s`` is written as ``lora_alpha = s·r'`` with
``use_rslora=False`` (same scale, exact). ``use_dora`` is global as well: a model where some layers
are DoRA and others not is written as DoRA throughout, the others with magnitude ``‖W + s·BA‖_row``
(so their rescaling is 1 and they compute ``W + s·BA``). PEFT receives ``lora_dropout`` only when
all layers agree (it has no per-layer dropout; dropout does not change eval outputs anyway).

**No exact PEFT form** (``PeftExportError``, a ``ValueError``, pointing to ``sl.merge``): ``full``
and ``galore`` train the dense weight; ``sst`` trains all singular values and swaps vectors,
``sltrain`` has no pretrained base, ``relora`` merges into W at every restart (and trains biases),
``svft``'s update ``U M Vh`` reaches rank min(out, in) for every pattern — a full-rank "LoRA" would
be larger than the merged weight. A method added later is exportable as soon as its layer has
``as_lora()`` returning :class:`spectrallab.methods.lora.LoRAExport` (or, for a DoRA-type layer,
:class:`spectrallab.methods.dora.DoRAExport`, which adds the magnitude).

**transformers' Conv1D** (GPT-2): an adapted Conv1D works on the transposed weight (out × in), so
its factors are already PEFT's (``lora_A`` r × in, ``lora_B`` out × r, DoRA's magnitude one per
output); PEFT transposes ``B·A`` itself for a Conv1D target. The config says
``fan_in_fan_out=True`` when every target is a Conv1D, so PEFT loads it without a warning (PEFT
decides per module anyway). ``load_peft`` gives Conv1D layers adapted the same way; ``merge`` gives
back Conv1D layers.

**Tied layers** (GPT-2's ``lm_head``, tied to ``transformer.wte``): ``apply`` leaves them out, so
``save_peft`` never targets them. PEFT can adapt one (it adds ``B·A`` to the layer's output and
saves a copy of the shared weight, ``<module>.base_layer.weight``); ``load_peft`` refuses such an
adapter, naming the tie — give the layer its own copy of the weight first, which changes no
output. Such a saved base-weight copy is accepted only when it equals the model's weight (PEFT
would overwrite the model's weight with it).

Parameters outside the adapted layers are not part of the adapter: if some are trainable
(``apply(..., freeze_others=False)``) ``save_peft`` warns, naming them.

Files: ``adapter_model.safetensors`` needs the ``safetensors`` package (``pip install
'spectrallab[peft]'``); ``load_peft`` also reads PEFT's ``adapter_model.bin`` with
``torch.load(weights_only=True)``. Neither function imports ``peft``.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .apply import _FROZEN_BY_APPLY, _module_names, _set_submodule, _ties, adapted_layers, apply
from .methods.base import AdaptedLinear, is_conv1d
from .methods.lora import LoRAExport, lora_scale

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."  # PEFT's saved keys: PeftModel.base_model (LoraModel).model (yours)

# Why a method's layers cannot be written as a PEFT LoRA (by method name). A method not named here
# and without `as_lora()` gets a generic reason.
NO_PEFT_FORM = {
    "full": "it trains the dense weight, so W' − W has full rank in general",
    "galore": "GaLore trains the dense weight (its projection is of the gradient, not of the weight), "
    "so W' − W has full rank in general",
    "sst": "SST trains every singular value and re-samples the trained singular vectors, "
    "so W' − W has full rank in general",
    "sltrain": "SLTrain has no pretrained base to adapt: W = s·BA + S (sparse) is trained from scratch",
    "relora": "ReLoRA merges s·BA into W at every restart (and trains the biases); the change from the "
    "starting W is a sum of rank-r pieces that is not kept",
    "svft": "SVFT's update U·M·Vh spans all k = min(out, in) singular vectors (rank up to k for every "
    "pattern, k already for the diagonal one), and its base is the SVD reconstruction of W: "
    "a rank-k LoRA would store k·(out + in) numbers, more than the merged weight",
}


class PeftExportError(ValueError):
    """A layer has no exact PEFT LoRA form (the message says why and points to ``sl.merge``)."""


@dataclass
class PeftExport:
    """What ``save_peft`` wrote: the directory, each layer's rank and method, and the PEFT config."""

    directory: Path
    ranks: dict[str, int]
    methods: dict[str, str]
    config: dict[str, Any] = field(repr=False)

    def __str__(self) -> str:
        lines = [f"PEFT LoRA adapter in {self.directory} ({'DoRA' if self.config['use_dora'] else 'LoRA'}):"]
        lines += [f"  {name}: {self.methods[name]} -> rank {r}" for name, r in self.ranks.items()]
        return "\n".join(lines)


# -- save ----------------------------------------------------------------------------------------


def save_peft(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    task_type: str | None = None,
    base_model_name_or_path: str | None = None,
) -> PeftExport:
    """Write ``model``'s adapted layers as a PEFT LoRA adapter that ``PeftModel.from_pretrained``
    loads onto the **original** model (the one before ``sl.apply``) with the same outputs.

    Writes ``directory/adapter_model.safetensors`` and ``directory/adapter_config.json`` (the
    directory is created). Returns a :class:`PeftExport` with the rank written for each layer
    (``export.ranks``), the method of each layer and the config. Raises :class:`PeftExportError`
    (a ``ValueError``) naming the first layer whose method has no exact PEFT form — before
    anything is written. ``task_type`` (e.g. ``"CAUSAL_LM"``) and ``base_model_name_or_path``
    (default: the model's ``name_or_path`` when it has one) go into the config as given.
    """
    layers = adapted_layers(model)
    if isinstance(model, AdaptedLinear) or "" in layers:
        raise ValueError(
            "save_peft needs a model that contains adapted layers (PEFT names each one by its "
            "module name); got a single adapted layer — wrap it in a module"
        )
    if not layers:
        raise ValueError(
            "save_peft: the model has no adapted layers; use spectrallab.apply(model, 'lora', ...) "
            "first, or save a plain model with torch.save(model.state_dict(), ...)"
        )
    exports: dict[str, LoRAExport] = {}
    for name, layer in layers.items():
        if not callable(getattr(layer, "as_lora", None)):
            reason = NO_PEFT_FORM.get(
                layer.method,
                f"method {layer.method!r} does not say how to write its "
                "update as B·A on the original weight (no as_lora())",
            )
            raise PeftExportError(
                f"layer {name!r} (method {layer.method!r}) has no exact PEFT form: {reason}. "
                "Use spectrallab.merge(model) for plain layers with the same outputs "
                "(and torch.save(model.state_dict(), ...)); PEFT adapters exist for "
                "low-rank updates only"
            )
        exports[name] = _fit_rank(layer.as_lora(), layer)
    _warn_trainable_outside(model, layers)

    ranks = {name: int(e.A.shape[0]) for name, e in exports.items()}
    magnitudes = {name: getattr(e, "magnitude", None) for name, e in exports.items()}
    use_dora = any(m is not None for m in magnitudes.values())
    # Each layer's (alpha, rslora): its own when it is written at its own rank (LoRA, rsLoRA, DoRA,
    # LoRA-XS), else the plain scale s as alpha = s·r' (2r exports, scale-1 forms).
    own = {}
    for name, layer in layers.items():
        r, s = ranks[name], float(exports[name].scale)
        alpha, rslora, rank = (
            getattr(layer, "alpha", None),
            bool(getattr(layer, "rslora", False)),
            getattr(layer, "rank", None),
        )
        if alpha is not None and rank == r and lora_scale(float(alpha), r, rslora) == s:
            own[name] = (float(alpha), rslora)
        else:
            own[name] = (s * r, False)
    use_rslora = all(rslora for _, rslora in own.values())
    alphas = {}
    for name, (alpha, rslora) in own.items():
        if rslora != use_rslora:  # an rsLoRA layer among plain ones: the same s as alpha/r'
            alpha = float(exports[name].scale) * ranks[name]
        alphas[name] = _tidy(alpha)

    # PEFT stores lora_A (r × in) and lora_B (out × r) the same way for nn.Linear and Conv1D; for a
    # Conv1D it transposes B·A before adding it to the in × out weight. It decides that per module
    # (its dispatcher sets fan_in_fan_out for each target's class, warning when the config said
    # otherwise), so the flag only has to be right to load silently: True when every target is a
    # Conv1D (GPT-2). A model mixing both gets PEFT's warning for one kind, and the same outputs.
    conv1d = [_is_conv1d(layer) for layer in layers.values()]
    r_default = Counter(ranks.values()).most_common(1)[0][0]
    alpha_default = Counter(alphas.values()).most_common(1)[0][0]
    names = list(layers)
    rank_pattern = _patterns(names, ranks, r_default)
    alpha_pattern = _patterns(names, alphas, alpha_default)
    dropouts = {_dropout(layer) for layer in layers.values()}
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path or _name_or_path(model),
        "r": r_default,
        "lora_alpha": alpha_default,
        "use_rslora": use_rslora,
        "use_dora": use_dora,
        "target_modules": _target_modules(model, names),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": all(conv1d),
        "bias": "none",
        "lora_dropout": dropouts.pop() if len(dropouts) == 1 else 0.0,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
    }
    tensors = {}
    for name, e in exports.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = e.A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = e.B
        if use_dora:
            magnitude = magnitudes[name] if magnitudes[name] is not None else _row_norm(e)
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = magnitude
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}

    save_file = _safetensors().save_file
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    _write_atomic(path / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    _write_atomic(
        path / ADAPTER_CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    )
    return PeftExport(path, ranks, {name: layer.method for name, layer in layers.items()}, config)


def _fit_rank(e: LoRAExport, layer: AdaptedLinear) -> LoRAExport:
    """Never more than ``min(out, in)``: a 2r export of a narrow layer (or VeRA's r > the layer's
    size) is rewritten as ``I · ΔW`` on the narrow side — rank ``min(out, in)``, scale 1, exact up
    to the rounding of the one product ``s·B A`` (no SVD)."""
    m, n = layer.out_features, layer.in_features
    if e.A.shape[0] <= min(m, n):
        return e
    with torch.no_grad():
        wide = torch.promote_types(e.A.dtype, torch.float32)
        delta = (float(e.scale) * (e.B.to(wide) @ e.A.to(wide))).to(e.A.dtype)  # m × n
        if n <= m:  # ΔW = ΔW · I_n: lora_A = I (n × n), lora_B = ΔW
            A, B = torch.eye(n, dtype=delta.dtype, device=delta.device), delta
        else:  # ΔW = I_m · ΔW: lora_A = ΔW, lora_B = I (m × m)
            A, B = delta, torch.eye(m, dtype=delta.dtype, device=delta.device)
    return e._replace(A=A, B=B, scale=1.0)


def _tidy(x: float) -> float | int:
    """An integral alpha as an int (readable JSON); anything else as the float it is (repr round-trips)."""
    return int(round(x)) if math.isfinite(x) and abs(x - round(x)) <= 1e-12 * max(1.0, abs(x)) else x


def _row_norm(e: LoRAExport) -> torch.Tensor:
    """``‖W + s·BA‖`` per output row: the DoRA magnitude that makes a plain LoRA layer's rescaling 1."""
    with torch.no_grad():
        wide = torch.promote_types(e.weight.dtype, torch.float32)
        V = torch.addmm(e.weight.to(wide), e.B.to(wide), e.A.to(wide), alpha=float(e.scale))
        return torch.linalg.vector_norm(V, dim=1).to(e.weight.dtype)


def _dropout(layer: nn.Module) -> float:
    drop = getattr(layer, "dropout", None)
    return float(drop.p) if isinstance(drop, nn.Dropout) else 0.0


def _is_conv1d(layer: AdaptedLinear) -> bool:
    """Whether the layer replaced a transformers ``Conv1D`` (``apply`` records it as ``layer.origin``)."""
    return layer.origin is not None and any(
        cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.") for cls in layer.origin.__mro__
    )


def _name_or_path(model: nn.Module) -> str | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return name if isinstance(name, str) and name else None


def _warn_trainable_outside(model: nn.Module, layers: dict[str, AdaptedLinear]) -> None:
    inside = {id(p) for layer in layers.values() for p in layer.parameters()}
    outside = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in inside]
    if outside:
        shown = ", ".join(outside[:8]) + (f", ... ({len(outside)} in all)" if len(outside) > 8 else "")
        warnings.warn(
            f"save_peft writes the adapted layers only; these trainable parameters outside them are not "
            f"in the adapter (PEFT's base model must already hold their values): {shown}",
            stacklevel=3,
        )


# PEFT's matching rules, restated so that what we write is checked against what PEFT will do:
# target_modules (a list): a module is targeted when its name equals an entry or ends in "." + entry
# (a string: re.fullmatch); rank_pattern / alpha_pattern: the first key with
# re.match(rf"(.*\.)?({key})$", name) (peft.utils.other.get_pattern_key).


def _peft_targets(entries: list[str] | str, name: str) -> bool:
    if isinstance(entries, str):
        return re.fullmatch(entries, name) is not None
    return name in entries or any(name.endswith("." + e) for e in entries)


def _peft_pattern(pattern: dict[str, Any], name: str, default: Any) -> Any:
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _config_targets(config: dict[str, Any], name: str) -> bool:
    """Whether a PEFT config targets module ``name`` (target_modules, exclude_modules; PEFT's
    "all-linear" shorthand and layers_to_transform are taken as matching — the weights decide)."""
    exclude = config.get("exclude_modules")
    if exclude and _peft_targets(exclude if isinstance(exclude, str) else list(exclude), name):
        return False
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear" or config.get("layers_to_transform") is not None:
        return True
    return _peft_targets(targets if isinstance(targets, str) else list(targets), name)


def _target_modules(model: nn.Module, names: list[str]) -> list[str] | str:
    """The target list PEFT reads back as exactly ``names``: the names themselves, or (when one of them
    is also the tail of another module's name) an anchored regular expression."""
    every = [n for n, _ in model.named_modules() if n]
    wanted = set(names)
    plain = sorted(names)
    if {n for n in every if _peft_targets(plain, n)} == wanted:
        return plain
    regex = "(?:" + "|".join(re.escape(n) for n in plain) + ")"
    assert {n for n in every if _peft_targets(regex, n)} == wanted
    return regex


def _patterns(names: list[str], values: dict[str, Any], default: Any) -> dict[str, Any]:
    """``rank_pattern`` / ``alpha_pattern`` entries for the layers whose value differs from ``default``,
    keyed by plain module names when PEFT's first-match rule gives every layer its value, else by
    anchored, escaped names (``^blocks\\.0\\.fc1``: matches that one module only)."""
    differ = [n for n in names if values[n] != default]
    for key in (lambda n: n, lambda n: "^" + re.escape(n)):
        pattern = {key(n): values[n] for n in differ}
        if all(_peft_pattern(pattern, n, default) == values[n] for n in names):
            return pattern
    raise AssertionError(f"no rank/alpha pattern reproduces {values}")  # anchored keys always do


def _write_atomic(target: Path, write) -> None:
    """Write to a temporary name beside ``target``, then rename: a failure leaves no half-written file."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "PEFT adapters are stored as safetensors: pip install safetensors (or pip install 'spectrallab[peft]')"
        ) from None
    return safetensors.torch


# -- load ----------------------------------------------------------------------------------------

# Config fields that change what an adapter means in ways spectrallab's lora/dora cannot reproduce.
_UNSUPPORTED_FIELDS = (
    "modules_to_save",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "lora_bias",
    "use_qalora",
    "alora_invocation_tokens",
    "use_bdlora",
    "arrow_config",
    "monteclora_config",
)
_SUFFIXES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",
    # a full copy of the base weight: PEFT's save_embedding_layers, on by default when
    # target_modules names lm_head / embed_tokens (for resized vocabularies)
    ".base_layer.weight": "base",
}


def load_peft(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Put a PEFT LoRA, rsLoRA or DoRA adapter (``save_pretrained``'s directory) on the plain ``model``.

    Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``adapter_model.bin``),
    applies spectrallab's ``lora`` (or ``dora`` when ``use_dora``) to exactly the modules the weights
    file names, with PEFT's rank, ``lora_alpha`` (``rank_pattern`` / ``alpha_pattern`` per layer),
    ``use_rslora`` and ``lora_dropout``, and copies the weights in. The result computes what
    ``PeftModel.from_pretrained(model, directory)`` computes. Returns the model (in place).

    Bad input — a missing file, another ``peft_type``, a module the model does not have, a tensor
    whose shape does not fit its layer, a tied layer (see above), an option spectrallab's LoRA has no
    equivalent for — raises ``FileNotFoundError``/``ValueError`` naming the file and the layer, and
    leaves the model as it was.
    """
    path = Path(directory)
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(
            f"load_peft: no {ADAPTER_CONFIG} in {path} (a PEFT adapter directory holds "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"load_peft: {config_file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"load_peft: {config_file} must hold a JSON object, got {type(config).__name__}")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise ValueError(
            f"load_peft: {config_file} has peft_type={peft_type!r}; only 'LORA' adapters "
            "(LoRA, rsLoRA, DoRA) can be loaded"
        )
    for key in _UNSUPPORTED_FIELDS:
        if config.get(key):
            raise ValueError(
                f"load_peft: {config_file} sets {key}={config[key]!r}, which spectrallab's lora/dora "
                "cannot reproduce; only plain LoRA, rsLoRA and DoRA adapters are supported"
            )
    if config.get("bias", "none") != "none":
        raise ValueError(
            f"load_peft: {config_file} has bias={config['bias']!r}; only bias='none' is supported "
            "(spectrallab's LoRA keeps the base biases frozen)"
        )
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    use_rslora, use_dora = bool(config.get("use_rslora", False)), bool(config.get("use_dora", False))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    dropout = float(config.get("lora_dropout") or 0.0)

    weights_file, tensors = _read_weights(path)
    per_layer: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        part = next(((k, v) for k, v in _SUFFIXES.items() if key.endswith(k)), None)
        if not key.startswith(PREFIX) or part is None:
            raise ValueError(
                f"load_peft: {weights_file} holds {key!r}, which is not a LoRA tensor "
                f"('{PREFIX}<module>.lora_A.weight', '.lora_B.weight', '.lora_magnitude_vector')"
            )
        name = key[len(PREFIX) : -len(part[0])]
        per_layer.setdefault(name, {})[part[1]] = tensor
    if not per_layer:
        raise ValueError(f"load_peft: {weights_file} holds no LoRA tensors")

    modules = dict(model.named_modules())
    places = _module_names(model)
    plan = {}  # name -> (rank, alpha)
    for name, parts in per_layer.items():
        where = f"{weights_file}, layer {name!r}"
        module = modules.get(name) if name else None
        if module is None:
            linear = [n for n, m in modules.items() if isinstance(m, nn.Linear) or is_conv1d(m)]
            raise ValueError(
                f"load_peft: {where}: the model has no module named {name!r}. Linear layers in this "
                f"model: {', '.join(linear[:12]) or '(none)'}{' ...' if len(linear) > 12 else ''}"
            )
        if isinstance(module, AdaptedLinear):
            raise ValueError(
                f"load_peft: {where}: already has method {module.method!r} applied; load the adapter "
                "onto the plain model (or call spectrallab.merge(model) first)"
            )
        if not (isinstance(module, nn.Linear) or is_conv1d(module)):
            raise ValueError(
                f"load_peft: {where} is a {type(module).__name__}; spectrallab's LoRA adapts nn.Linear "
                "(and transformers' Conv1D) layers"
            )
        if not _config_targets(config, name):
            raise ValueError(
                f"load_peft: {where}: has weights, but {ADAPTER_CONFIG} does not target it "
                f"(target_modules={config.get('target_modules')!r}, exclude_modules="
                f"{config.get('exclude_modules')!r}); PEFT would not load them: the two files disagree"
            )
        tie = _ties(model, {name: module}, places).get(name)
        if tie:
            raise ValueError(
                f"load_peft: {where}: {tie}. PEFT adds B·A to a tied layer's output and leaves the "
                "shared weight alone; spectrallab's methods do not adapt tied layers (apply leaves them "
                "out). Give the layer its own copy first (layer.weight = nn.Parameter(layer.weight"
                ".detach().clone()); the outputs are the same) and load again"
            )
        base = parts.pop("base", None)
        if base is not None and not (
            base.shape == module.weight.shape
            and torch.equal(base.to(module.weight.dtype), module.weight.detach().cpu())
        ):
            raise ValueError(
                f"load_peft: {where}: the file holds a copy of the layer's base weight (PEFT's "
                "save_embedding_layers) that differs from the model's: PEFT would replace the model's "
                f"weight by it. Copy it in first (the tensor '{PREFIX}{name}.base_layer.weight', "
                f"shape {tuple(base.shape)}; the model's is {tuple(module.weight.shape)}), then load"
            )
        needed = {"A", "B", "magnitude"} if use_dora else {"A", "B"}
        if set(parts) != needed:
            raise ValueError(
                f"load_peft: {where}: has {sorted(parts)}, expected {sorted(needed)} "
                f"(use_dora={use_dora} in {ADAPTER_CONFIG})"
            )
        out_f, in_f = _shape(module)
        rank = _peft_pattern(rank_pattern, name, r)
        expect = {"A": (rank, in_f), "B": (out_f, rank), "magnitude": (out_f,)}
        for part, tensor in parts.items():
            if tuple(tensor.shape) != expect[part]:
                raise ValueError(
                    f"load_peft: {where}: {part} has shape {tuple(tensor.shape)}, but the layer is "
                    f"{out_f}×{in_f} (out × in) at rank {rank} (from {ADAPTER_CONFIG}), so it must be "
                    f"{expect[part]}"
                )
        if not (isinstance(rank, int) and 1 <= rank <= min(out_f, in_f)):
            raise ValueError(
                f"load_peft: {where} ({out_f}×{in_f}): rank={rank!r} is outside the range spectrallab's "
                f"LoRA allows, [1, {min(out_f, in_f)}] = [1, min(out, in)]"
            )
        plan[name] = (rank, float(_peft_pattern(alpha_pattern, name, alpha)))

    # One apply per (rank, alpha); if a later one fails, put every original module (and every
    # requires_grad flag) back, so nothing is half-applied.
    originals = {name: modules[name] for name in plan}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    frozen_before = set(getattr(model, _FROZEN_BY_APPLY, set()))
    had_frozen = hasattr(model, _FROZEN_BY_APPLY)
    try:
        groups: dict[tuple[int, float], list[str]] = {}
        for name, key in plan.items():
            groups.setdefault(key, []).append(name)
        for (rank, a), names in groups.items():
            regex = "(?:" + "|".join(re.escape(n) for n in names) + ")"
            apply(
                model,
                "dora" if use_dora else "lora",
                targets=regex,
                rank=rank,
                alpha=a,
                rslora=use_rslora,
                dropout=dropout,
            )
        with torch.no_grad():
            for name, parts in per_layer.items():
                layer = model.get_submodule(name)
                layer.lora_A.copy_(parts["A"].to(layer.lora_A.dtype))
                layer.lora_B.copy_(parts["B"].to(layer.lora_B.dtype))
                if use_dora:
                    layer.magnitude.copy_(parts["magnitude"].to(layer.magnitude.dtype))
    except BaseException:
        for name, module in originals.items():
            _set_submodule(model, name, module)
        for p, flag in flags:
            p.requires_grad_(flag)
        if had_frozen:
            setattr(model, _FROZEN_BY_APPLY, frozen_before)
        elif hasattr(model, _FROZEN_BY_APPLY):
            delattr(model, _FROZEN_BY_APPLY)
        raise
    return model


def _shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)``; a transformers Conv1D stores its weight as in × out."""
    if is_conv1d(module):
        return int(module.weight.shape[1]), int(module.weight.shape[0])
    return module.out_features, module.in_features


def _read_weights(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    file = path / ADAPTER_WEIGHTS
    if file.is_file():
        try:
            return file, _safetensors().load_file(str(file))
        except ImportError:
            raise
        except Exception as err:
            raise ValueError(f"load_peft: {file} could not be read as safetensors: {err}") from None
    file = path / ADAPTER_WEIGHTS_BIN
    if file.is_file():
        state = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"load_peft: {file} is not a dict of tensors")
        return file, state
    raise FileNotFoundError(f"load_peft: no {ADAPTER_WEIGHTS} (or {ADAPTER_WEIGHTS_BIN}) in {path}")
