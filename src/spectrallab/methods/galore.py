"""GaLore — Memory-Efficient LLM Training by Gradient Low-Rank Projection (Zhao, Zhang, Chen, Wang,
Anandkumar & Tian 2024, arXiv:2403.03507, ICML 2024).

GaLore is an **optimizer, not a layer**: the weight ``W ∈ ℝ^{m×n}`` stays dense and fully trainable,
and the low rank lives in the *optimizer state*. Every ``T = update_proj_gap`` steps the current
gradient ``G`` is factorized and its top-r singular vectors become a projection ``P``; Adam runs on
the small projected gradient ``R`` and its step is projected back (Algorithm 2, "Adam with GaLore")::

    t mod T = 0:  U, S, Vh = SVD(G_t)            (float32, thin)
                  P = Vh[:r]   (r × n)  if m ≥ n      R_t = G_t Pᵀ    (m × r)     "right"
                  P = U[:, :r] (m × r)  if m < n      R_t = Pᵀ G_t    (r × n)     "left"
    M_t = β₁ M_{t−1} + (1 − β₁) R_t
    V_t = β₂ V_{t−1} + (1 − β₂) R_t²
    N_t = M̂_t / (√V̂_t + ε)                        (bias-corrected, see "conventions" below)
    W_t = W_{t−1} − η · α · back(N_t)             back(N) = N P  (right) or P N  (left)
    W_t = W_t − η · λ · W_t                       decoupled weight decay on the full W

Projecting on the *smaller* side keeps the state smallest: per weight the optimizer holds the two
moments of ``R`` and ``P`` — ``2·m·r + r·n`` numbers for ``m ≥ n`` (``m·r + 2·n·r`` in the paper's
``m ≤ n`` orientation, Table 1) instead of AdamW's ``2·m·n``. The paper's settings: ``T = 200``,
``α = scale = 0.25`` (not divided by r, unlike LoRA's ``alpha/r``), r = 128–512 for 60M–1B models.
What GaLore does **not** shrink: ``W`` itself, its full ``m × n`` gradient (it is computed by
``backward`` and then projected; the paper's per-layer update during backward frees it earlier, not
done here) and the activations.

**Stale moments.** When ``P`` is recomputed, ``M`` and ``V`` are kept as they are (Algorithm 2
initializes them once): their coordinates were measured in the old basis and are now read in the new
one (and the SVD's arbitrary order and signs make coordinate i of the new basis unrelated to
coordinate i of the old). The moving averages forget the stale part within about ``1/(1−β₁) = 10``
steps for ``M`` but ``1/(1−β₂) = 1000`` for ``V``. The reference implementation does the same; we
reproduce it on purpose (the chapter measures how much of the momentum's direction survives a swap).

**Conventions — matched to the reference implementation** ``galore-torch`` 1.0 (``GaLoreAdamW``,
read to understand, re-implemented here; ``tests/test_galore.py`` checks that the same weights and
gradients give the same weights out), where the paper leaves them open:

* The first projection is computed at the first step from the first gradient; it is recomputed
  when the parameter's step count *before* the update is a multiple of ``T``: at optimizer steps
  1, T+1, 2T+1, … (1-based), and never in between.
* Steps are counted per parameter (a parameter without a gradient in a step is skipped entirely).
* ε is added to ``√V`` *before* the bias correction is applied to the step size:
  ``step = η · √(1−β₂ᵗ)/(1−β₁ᵗ)`` and ``N = M / (√V + ε)`` (Hugging Face's AdamW convention; the
  paper's Algorithm 2 writes ``M̂/(√V̂ + ε)``, which differs only in how large ε effectively is).
* Weight decay is applied *after* the update, to the updated ``W``, with the group's ``η`` and not
  multiplied by ``scale``: ``W ← W − η·λ·W``.
* ``P`` is taken from ``torch.linalg.svd(G.float(), full_matrices=False)`` and stored in the
  gradient's dtype; the moments have the projected gradient's dtype.
* Every other parameter (biases, norms, embeddings, layers without GaLore) gets the same Adam with
  no projection — one optimizer for the whole model, as ``GaLoreAdamW`` with two param groups.

Where we deliberately differ from ``galore-torch``:

* Defaults: ``eps = 1e-8`` and ``weight_decay = 1e-2`` (torch's ``AdamW`` defaults, which
  ``spectrallab.optimizer`` uses for every other method, so methods compare at equal settings);
  ``galore-torch`` defaults to ``eps = 1e-6, weight_decay = 0``. Pass those to reproduce it.
* Everything the optimizer keeps per parameter is a tensor in ``optimizer.state[p]``: ``step``,
  ``exp_avg``, ``exp_avg_sq`` and ``projection_right`` (r × n) and/or ``projection_left`` (m × r)
  — which key is present says the side. ``state_dict()`` round-trips, and a generic memory report
  counts the projection. (``galore-torch`` keeps ``P`` inside a Python projector object.)
* The side of the back-projection follows from ``P`` (the stored key), not from the shape of the
  projected gradient — the reference's ``reverse_std`` picks the wrong side when r equals the
  smaller dimension.
* ``rank`` must be in [1, min(m, n)] (the reference silently truncates larger ranks).

``proj_type``: ``"std"`` (the paper: the smaller side), ``"reverse_std"`` (the larger side),
``"right"``, ``"left"``, or ``"full"`` (both sides: ``R = U_rᵀ G Vh_rᵀ``, r × r, back ``U_r N Vh_r``),
as in ``galore-torch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..linalg import all_finite
from ..optim_hooks import add_step_check
from ..shards import gather_rows, is_sharded, local, shard_of, split_by_rows, sum_over_shards, whole
from .base import AdaptedLinear, LayerCounts, Method, check_rank, register, reset_linear_
from .options import Option, rank_option

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")
# What a GaLore param group carries; the same keys as galore-torch's GaLoreAdamW reads, so a group
# built here also works there (the cross-check relies on it).
GROUP_KEYS = ("rank", "update_proj_gap", "scale", "proj_type")


def projection_sides(shape: tuple[int, int], proj_type: str) -> tuple[str, ...]:
    """Which side(s) ``P`` multiplies for a gradient of ``shape`` (m, n): ``("right",)`` means
    ``R = G Pᵀ`` with ``P`` r × n; ``("left",)`` means ``R = Pᵀ G`` with ``P`` m × r."""
    m, n = shape
    if proj_type == "std":
        return ("right",) if m >= n else ("left",)
    if proj_type == "reverse_std":
        return ("left",) if m >= n else ("right",)
    if proj_type in ("right", "left"):
        return (proj_type,)
    if proj_type == "full":
        return ("left", "right")
    raise ValueError(f"proj_type={proj_type!r} is not one of {', '.join(map(repr, PROJ_TYPES))}")


@torch.no_grad()
def projections(grad: torch.Tensor, rank: int, sides: Iterable[str]) -> dict[str, torch.Tensor]:
    """The top-``rank`` singular vectors of ``grad`` for each side: ``{"left": U[:, :r], "right": Vh[:r]}``.

    The SVD runs in float32 (bf16/fp16 gradients are upcast); ``P`` is returned in ``grad``'s dtype.
    """
    U, _, Vh = torch.linalg.svd(grad.float(), full_matrices=False)
    out = {}
    for side in sides:
        P = U[:, :rank] if side == "left" else Vh[:rank]
        out[side] = P.to(grad.dtype)
    return out


def project(grad: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
    """``R = Pₗᵀ G Pᵣᵀ`` with the sides that exist."""
    if left is not None:
        grad = left.T @ grad
    if right is not None:
        grad = grad @ right.T
    return grad


def project_shard(grad: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
    """:func:`project` for a gradient that may be an FSDP2 shard: the whole ``R``, the same on every
    rank, without gathering ``G`` when it is split by rows (``Shard(0)``, FSDP2's default).

    With ``G``'s rows split as G₁, G₂, ... between the ranks: ``Pₗᵀ G = Σᵢ Pₗ[rowsᵢ]ᵀ Gᵢ``, an
    all-reduce of r × n (then ``· Pᵣᵀ`` for ``"full"``, r × r), and ``G Pᵣᵀ`` stacks the ranks'
    ``Gᵢ Pᵣᵀ``, an all-gather of m × r; gathering G would move m × n. Any other split is gathered.
    """
    if not is_sharded(grad):
        return project(grad, left, right)
    if not split_by_rows(grad):
        return project(grad.full_tensor(), left, right)
    rows = grad.to_local()
    if left is None:
        return gather_rows(rows @ right.T, like=grad)
    partial = shard_of(left, like=grad).T @ rows
    if right is not None:
        partial = partial @ right.T
    return sum_over_shards(partial, like=grad)


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW in which every param group with a ``rank`` key runs on GaLore-projected gradients.

    A GaLore group: ``{"params": [2-D weights], "rank": r, "update_proj_gap": T, "scale": α,
    "proj_type": "std"}`` (the keys ``galore-torch`` uses). Every other group is plain AdamW with the
    same conventions (see the module docstring: ε outside the bias correction, weight decay after
    the update). ``spectrallab.optimizer`` builds the groups from the model; build it by hand only to
    mix GaLore into your own grouping.

    ``lr`` (1e-3), ``betas`` ((0.9, 0.999)), ``eps`` (1e-8), ``weight_decay`` (1e-2, decoupled),
    ``correct_bias`` (True; False drops Adam's bias correction, as in ``galore-torch``).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        correct_bias: bool = True,
    ):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < math.inf:
            raise ValueError(f"lr={lr!r} is outside the allowed range [0, inf)")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas={betas!r}: each beta must be in [0, 1)")
        if not 0 <= eps < math.inf:
            raise ValueError(f"eps={eps!r} is outside the allowed range [0, inf)")
        if not 0 <= weight_decay < math.inf:
            raise ValueError(f"weight_decay={weight_decay!r} is outside the allowed range [0, inf)")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "correct_bias": bool(correct_bias),
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "rank" in param_group:
            params = param_group["params"]
            # Materialize once (a generator would be consumed by the check), as torch would.
            param_group = {**param_group, "params": [params] if isinstance(params, torch.Tensor) else list(params)}
            check_group(param_group)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.check_gradients()  # before any group is stepped: a refused step changes nothing
        for group in self.param_groups:
            self._step_group(group)
        return loss

    @torch.no_grad()
    def check_gradients(self) -> None:
        """Every gradient this step will factorize (a new projection) must be finite.

        Otherwise ``torch.linalg.svd`` fails deep inside LAPACK with no layer in its message — and,
        since the groups are stepped in order, after the plain group (biases, norms) was already
        updated. Checked for all groups first, so a ``ValueError`` here leaves every parameter and
        every state tensor as it was. ``param_names`` (``{id(param): name}``, set by
        ``spectrallab.optimizer``) names the layer.
        """
        names = getattr(self, "param_names", {})
        for g, group in enumerate(self.param_groups):
            if "rank" not in group:
                continue
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state.get(p, {})  # .get: state is a defaultdict; reading must not add entries
                step = int(state["step"]) if "step" in state else 0
                if step % group["update_proj_gap"] and _has_projection(state):
                    continue  # no SVD this step
                if is_sharded(p.grad):  # FSDP2: every rank counts its rows, and all decide on the sum
                    rows = local(p.grad)
                    bad = int(sum_over_shards((~torch.isfinite(rows)).sum(), like=p.grad))
                else:
                    bad = 0 if all_finite(p.grad) else int((~torch.isfinite(p.grad)).sum())
                if bad:
                    where = f"layer {names[id(p)]!r}" if id(p) in names else f"param {i} of param group {g}"
                    raise ValueError(
                        f"{where}: the gradient has {bad} non-finite value(s) (NaN or inf) at step "
                        f"{step + 1}, where GaLore recomputes its projection from the gradient's SVD "
                        "(which needs finite values); nothing was updated"
                    )

    def _step_group(self, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        galore = "rank" in group
        params, grads, exp_avgs, exp_avg_sqs, step_sizes = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            if grad.is_sparse:
                raise RuntimeError("GaLoreAdamW does not support sparse gradients")
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)  # a float32 CPU tensor, as torch's own optimizers keep it
            step = int(state["step"])
            if galore:
                # A new projection from this gradient at steps 1, T+1, 2T+1, ...; R = Pₗᵀ G or G Pᵣᵀ.
                # Under FSDP2 the gradient is a shard, and every rank computes the same P, R and
                # moments (plain tensors, r columns or rows: small); each applies the update to its own
                # shard of W (_add_product_). The SVD needs the whole gradient, gathered every T steps;
                # in between R comes from each rank's rows (project_shard), and only R is exchanged.
                if step % group["update_proj_gap"] == 0 or not _has_projection(state):
                    grad = whole(grad)
                    sides = projection_sides(tuple(p.shape), group["proj_type"])
                    for side, P in projections(grad, group["rank"], sides).items():
                        state[f"projection_{side}"] = P
                grad = project_shard(grad, state.get("projection_left"), state.get("projection_right"))
            if "exp_avg" not in state:  # the moments have R's shape (r columns or rows) under GaLore
                state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            step += 1
            state["step"].fill_(step)
            step_size = lr
            if group["correct_bias"]:  # applied to the step, with ε added to √V uncorrected
                step_size = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            step_sizes.append(step_size)
        if not params:
            return

        # Adam on the whole group at once: torch._foreach_* does per tensor exactly what
        # exp_avg.mul_(β₁).add_(R, alpha=1−β₁) etc. would, in one call per operation.
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)  # M = β₁M + (1−β₁)R
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)  # V = β₂V + (1−β₂)R²
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, eps)  # √V + ε
        if galore:
            for p, exp_avg, denom, step_size in zip(params, exp_avgs, denoms, step_sizes):
                state = self.state[p]
                left, right = state.get("projection_left"), state.get("projection_right")
                normalized = exp_avg / denom  # N, in the projected coordinates
                alpha = -step_size * group["scale"]
                if left is not None and right is not None:  # "full": W += α · Pₗ N Pᵣ
                    _add_product_(p, left @ normalized, right, alpha)
                elif right is not None:  # W += α · N P   (m×r · r×n)
                    _add_product_(p, normalized, right, alpha)
                else:  # W += α · P N   (m×r · r×n)
                    _add_product_(p, left, normalized, alpha)
        else:
            torch._foreach_addcdiv_(params, exp_avgs, denoms, [-s for s in step_sizes])
        if group["weight_decay"] > 0.0:  # decoupled, on the full and already updated W (galore-torch's order)
            torch._foreach_add_(params, params, alpha=-lr * group["weight_decay"])


def _add_product_(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """``p += α · a b`` (``a``: m × r, ``b``: r × n, both whole). For an FSDP2 shard of ``p``, only its
    own part: split by rows (``Shard(0)``, FSDP2's default), that is ``a``'s matching rows times ``b``,
    so no m × n product is formed; any other split takes its part of the whole product."""
    if not is_sharded(p):
        p.addmm_(a, b, alpha=alpha)
        return
    if split_by_rows(p):
        p.to_local().addmm_(shard_of(a, like=p), b, alpha=alpha)
    else:
        p.to_local().add_(shard_of(a @ b, like=p), alpha=alpha)


def _has_projection(state: dict) -> bool:
    return "projection_right" in state or "projection_left" in state


def check_group(group: dict[str, Any]) -> None:
    """A GaLore param group's options and weights must make sense (``ValueError``/``TypeError``)."""
    missing = [k for k in GROUP_KEYS if k not in group]
    if missing:
        raise ValueError(f"a GaLore param group (one with 'rank') also needs {', '.join(missing)}")
    for key in ("update_proj_gap", "scale", "proj_type"):  # the method's own declarations, one wording
        GaLore.options[key].validate("a GaLore param group", key, group[key])
    rank = group["rank"]
    for i, p in enumerate(group["params"]):
        if p.dim() != 2:
            raise ValueError(f"GaLore projects 2-D weights; param {i} of the group has shape {tuple(p.shape)}")
        limit = min(p.shape)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(
                f"GaLore param {i} of the group ({p.shape[0]}×{p.shape[1]}): rank={rank!r} is "
                f"outside the allowed range [1, {limit}] = [1, min(m, n)]"
            )


class GaLoreLinear(AdaptedLinear):
    """A dense, fully trainable ``nn.Linear`` whose weight GaLore's optimizer projects.

    ``y = x Wᵀ + b``. The layer only marks ``weight`` for projection and remembers the options;
    all of GaLore happens in :class:`GaLoreAdamW` (built by ``spectrallab.optimizer``). The bias is
    trained by plain AdamW. The weight shares storage with the original layer.
    """

    method = "galore"
    memory_note = (
        "GaLore shrinks the optimizer state only: its gradients are full size (the same bytes as full "
        "training of those layers) and so are its activations"
    )

    def __init__(self, linear: nn.Linear, rank: int, update_proj_gap: int, scale: float, proj_type: str):
        super().__init__(linear.in_features, linear.out_features)
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=True)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=True)
        self.rank, self.update_proj_gap, self.scale, self.proj_type = rank, update_proj_gap, scale, proj_type

    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialization (after ``model.to_empty()`` on a meta-device model)."""
        reset_linear_(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def paper_counts(self) -> LayerCounts:
        """GaLore (Zhao et al. 2024, arXiv:2403.03507, Table 1): weights ``mn``, optimizer states
        ``mr + 2nr`` for ``m ≤ n``.

        The projector ``P`` is taken on the **smaller** side (``proj_type="std"``): the paper's Table 1
        assumes ``m ≤ n`` and stores ``P ∈ R^{m×r}``, with Adam's two moments on ``PᵀG ∈ R^{r×n}``; the
        official code does the same, projecting on the right when rows ≥ columns. For any shape that is
        ``min(m,n)·r + 2·max(m,n)·r``. The other ``proj_type`` values (those of ``galore-torch``) are
        counted as :class:`GaLoreAdamW` stores them: ``"reverse_std"`` the larger side, ``"left"``
        ``mr + 2nr``, ``"right"`` ``nr + 2mr``, ``"full"`` both projectors and an ``r × r`` pair of
        moments. All ``mn`` weights train, so **gradients stay ``mn``**: GaLore saves optimizer state,
        not gradient memory (the paper's per-layer weight updates, which free each gradient during
        backward, are a separate trick) and not activation memory (:attr:`memory_note`).
        """
        m, n, r = self.out_features, self.in_features, self.rank
        small, large = min(m, n), max(m, n)
        states = {
            "std": small * r + 2 * large * r,
            "reverse_std": large * r + 2 * small * r,
            "left": m * r + 2 * n * r,
            "right": n * r + 2 * m * r,
            "full": (m + n) * r + 2 * r * r,
        }[self.proj_type]
        return LayerCounts(m * n, m * n, states)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.rank}, update_proj_gap={self.update_proj_gap}, "
            f"scale={self.scale}, proj_type={self.proj_type!r}"
        )


@register("galore")
class GaLore(Method):
    """Dense training with Adam on low-rank projected gradients (a pre-training method).

    Options: ``rank`` (8; the paper uses 128–512 at LLaMA scale), ``update_proj_gap`` (200: T, steps
    between two SVDs of the gradient), ``scale`` (0.25: α, not divided by r), ``proj_type``
    ("std": project on the smaller side; also "reverse_std", "left", "right", "full").
    Every parameter stays trainable; ``spectrallab.optimizer(model, lr)`` returns a
    :class:`GaLoreAdamW` with one GaLore group (the adapted weights) and one plain group.
    Optimizer state per weight (m ≥ n, "std"): ``2·m·r`` moments + ``r·n`` for ``P``.
    """

    options = {
        "rank": rank_option(help="r, the rank of the gradient projection P"),
        "update_proj_gap": Option(200, "T, steps between two SVDs of the gradient (a new P)", kind="int", low=1),
        "scale": Option(
            0.25, "α, the scale of the projected-back update (not divided by r)", kind="float", low=0, low_open=True
        ),
        "proj_type": Option(
            "std",
            "which side P multiplies: the smaller (the paper), the larger, left, right or both",
            kind="choice",
            choices=PROJ_TYPES,
        ),
    }
    freezes_others = False
    init_reads_weight = None  # the projection comes from gradients: a meta-device model is fine
    needs_optimizer_hooks = (
        "GaLore's gradient projection (its GaLoreAdamW keeps Adam's moments in a rank-r "
        "subspace, refreshed every update_proj_gap steps): this is full-rank training"
    )

    @classmethod
    def period_options(cls, period: int) -> dict:
        """Every ``period`` steps (used by the Playground's "period" knob)."""
        return {"update_proj_gap": period}

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        check_rank(layer_name, linear, self.config["rank"])  # the options themselves: validate_options

    def adapt(self, layer_name: str, linear: nn.Linear) -> GaLoreLinear:
        c = self.config
        return GaLoreLinear(linear, c["rank"], c["update_proj_gap"], float(c["scale"]), c["proj_type"])

    def optimizer_groups(self, layers: dict[str, GaLoreLinear], optimizer_class: type[torch.optim.Optimizer]):
        """One GaLore group with every adapted weight; the optimizer must be :class:`GaLoreAdamW`.

        ``"adamw"`` (torch's ``AdamW``, the default) becomes :class:`GaLoreAdamW`; a subclass of
        ``GaLoreAdamW`` is kept; anything else cannot run GaLore and is refused.
        """
        if optimizer_class is torch.optim.AdamW:
            optimizer_class = GaLoreAdamW
        elif not (isinstance(optimizer_class, type) and issubclass(optimizer_class, GaLoreAdamW)):
            names = ", ".join(sorted(layers)[:4]) + (", ..." if len(layers) > 4 else "")
            raise ValueError(
                f"method 'galore' (layers {names}) needs an optimizer that projects gradients: "
                f"optimizer={getattr(optimizer_class, '__name__', optimizer_class)!r} cannot do "
                "GaLore. Use optimizer='adamw' (spectrallab's GaLoreAdamW) or a GaLoreAdamW subclass"
            )
        c = self.config
        weights = [layer.weight for layer in layers.values()]
        return optimizer_class, [{"params": weights, **{k: c[k] for k in GROUP_KEYS}}]

    def fsdp_refusal(self) -> None:
        """None: under FSDP2 :class:`GaLoreAdamW` gathers each whole gradient for its SVD (every T
        steps), projects the other steps' gradients from each rank's rows (only R, r rows or columns,
        is exchanged), keeps the (small) projected moments whole on every rank and updates each
        rank's shard of W."""
        return None

    def optimizer_runs_method(self, optimizer: torch.optim.Optimizer) -> bool:
        """A :class:`GaLoreAdamW` built by hand projects by itself (its param groups carry the options)."""
        return isinstance(optimizer, GaLoreAdamW)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, layers: dict[str, GaLoreLinear]) -> None:
        """Name the layers for error messages, and check the gradients to be factorized first.

        The check also runs inside :meth:`GaLoreAdamW.step`; registered here it runs before any other
        method's hook (an LR multiplier) touches the optimizer. GaLore's clock is the per-parameter
        ``step`` in ``optimizer.state`` (as in ``galore-torch``), so ``optimizer.state_dict()``
        carries it; an optimizer built again starts afresh (new moments, a new projection at its
        first step), like any new torch optimizer.
        """
        if not isinstance(optimizer, GaLoreAdamW):
            return
        names = getattr(optimizer, "param_names", {})
        names.update({id(layer.weight): name for name, layer in layers.items()})
        optimizer.param_names = names
        add_step_check(optimizer, lambda opt: opt.check_gradients())
