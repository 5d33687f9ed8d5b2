"""ReLoRA — High-Rank Training Through Low-Rank Updates (Lialin, Muckatira, Shivagunde & Rumshisky,
arXiv:2307.05695, ICLR 2024).

A pre-training method: a sum of low-rank updates can have high rank, so train LoRA, fold it into
the weight, start a new LoRA, and repeat. Each layer holds a frozen ``W`` and LoRA factors::

    W' = W + s · B A,      A ∈ R^{r×n} (Kaiming-uniform, a = √5),  B ∈ R^{m×r} (= 0),  s = alpha / r
    y  = x Wᵀ + b + s · (x Aᵀ) Bᵀ

and every ``T = reset_every`` optimizer steps, after the step, :func:`spectrallab.optimizer` runs
the **merge-and-reinit** of every layer (the paper's Algorithm 1):

1. **merge** ``W ← W + s·BA`` (written into the frozen ``W``; the function is unchanged);
2. **re-init** ``A`` Kaiming-uniform and ``B = 0`` (so again ``BA = 0``);
3. **prune the optimizer state** of ``A`` and ``B`` (``prune=``):

   * ``"random"`` (default): zero a random ``prune_ratio`` of the entries;
   * ``"magnitude"``: keep only the ``1 − prune_ratio`` entries of largest magnitude;
   * ``"reset"``: zero all of it (a plain optimizer reset).

   Without it, Adam's moments — built up for the *old* ``A, B`` — would keep pushing the new
   factors along the old update direction (the paper's motivation for the partial reset); a full
   reset instead throws away the whole history.
4. the **jagged schedule**: a learning-rate multiplier owned by the method that is 0 on the first
   step after each reset and climbs linearly back to 1 over ``restart_warmup`` steps
   (``j / restart_warmup`` on the ``j``-th step after a reset, ``j = 0, 1, …``). It multiplies
   whatever schedule the user runs: with ``sl.warmup_cosine`` it is exactly the paper's "jagged
   cosine" (Figure 2: "on every optimizer reset, we set the learning rate to zero and perform a
   quick (50–100 steps) learning rate warm-up back to the cosine schedule").

**The saddle right after a reset.** With ``B = 0``, ``∂L/∂A = s·Bᵀ (∂L/∂W') = 0`` exactly, while
``∂L/∂B = s·(∂L/∂W') Aᵀ ≠ 0``: the first steps after a merge only move ``B``, and ``A`` starts to
move once ``B ≠ 0``. The gradient norm of the LoRA factors collapses at every reset (the SST
paper's critique of ReLoRA). Initializing *both* factors to zero would be a true trap — every
gradient of ``A`` and ``B`` would then be zero forever — which is why ``A`` is re-drawn, never
zeroed.

**Warm start and ReLoRA\\*.** The paper starts from a partially trained full-rank model (a warm
start) and switches to ReLoRA after it. Here that is a composition: train with ``"full"``, then
``sl.merge`` and ``sl.apply(model, "relora", ...)``. **ReLoRA\\*** (as the SST paper, Zhao et al.
2024, runs it) has no warm start and prunes 99 % of the state: ``sl.apply(model, "relora",
prune_ratio=0.99)`` on a freshly initialized model.

Choices, where the paper or the authors' code leave room:

* **Counts, not coin flips.** The authors' code zeroes each entry independently with probability
  ``prune_ratio`` (random) or everything below the ``prune_ratio`` quantile (magnitude). We zero
  exactly ``⌊prune_ratio·N + ½⌋`` of the ``N`` entries of each factor — the same expected number,
  but exact and testable.
* **One mask per factor, shared by all of its state tensors** (Adam's ``exp_avg`` and
  ``exp_avg_sq``, AMSGrad's ``max_exp_avg_sq``, SGD's ``momentum_buffer``). Independent masks, as
  in the authors' code, can zero ``v`` and keep ``m`` for an entry of ``A``; since ``∂L/∂A = 0``
  right after a reset, ``v`` stays 0 and Adam's step ``m̂/(√v̂ + ε)`` on that entry is ``m/ε`` —
  huge. A shared mask keeps or drops ``(m, v)`` together. ``"magnitude"`` ranks the entries by the
  first moment ``|exp_avg|`` (or ``|momentum_buffer|``), the direction the optimizer carries over.
* Adam's step counter is left alone (as in the authors' code), so bias correction stays that of a
  long run.
* The restart warm-up is the multiplier ``j / restart_warmup`` (0 on the first step after a reset, as
  the authors' ``cosine_restarts`` scheduler); ``restart_warmup = 0`` disables it. It scales every
  parameter group of the optimizer (the embeddings and norms too), like the authors' scheduler.
  Default 100 steps, the value of the authors' 130M runs (and the upper end of the paper's 50–100).
* ``reset_every`` defaults to 2000 (the authors' 130M runs); small experiments set it themselves.
* The bias of an adapted layer stays trainable (the authors' layer keeps the original trainable
  bias), and so does every parameter outside the adapted layers (``freezes_others = False``): this
  is pre-training, not fine-tuning.
* ``W`` is copied at ``apply`` (merges write into it; the original ``nn.Linear`` is never touched).
* ``seed=None`` draws the layers' random streams from torch's global generator at ``apply``
  (``torch.manual_seed`` makes a run reproducible, as for LoRA; under ``torch.distributed`` every
  rank takes rank 0's draw, see ``resolve_seed``); an int seeds them from the seed and the layer
  name, independent of the global generator. The stream supplies ``A`` at ``apply``, the
  re-drawn ``A`` at every reset and the random pruning masks.

**State lives with the model**: the random stream and the restart clock are persistent buffers of
each layer (``rng_state``, ``steps_taken``, ``last_reset``, ``restarts_done``), so
``model.state_dict()`` + ``optimizer.state_dict()`` resume a run bit for bit and an optimizer built
again mid-run keeps the restarts at the same steps. A step that ends with a merge first checks
``A``, ``B`` and their gradients: a non-finite value raises ``ValueError`` naming the layer and the
step before anything (``W``, the factors, the optimizer state) is updated.

Trainable parameters per layer: ``r(m + n)`` (+ ``m`` with a bias). Optimizer state per layer:
``2r(m + n)`` with Adam, instead of ``2mn`` for full-rank training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..linalg import all_finite
from ..optim_hooks import add_lr_multiplier, add_step_check
from .base import (
    AdaptedLinear,
    LayerCounts,
    Method,
    check_rank,
    counter,
    drawing,
    frozen,
    generator_state,
    layer_generator,
    register,
    reset_linear_,
    resolve_seed,
)
from .options import Option, alpha_option, rank_option

PRUNE_MODES = ("random", "magnitude", "reset")


def round_half_up(x: float) -> int:
    """``⌊x + ½⌋``: the rounding used for every count in this file (no banker's rounding)."""
    return int(math.floor(x + 0.5))


def kaiming_factor(rows: int, cols: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``rows × cols``, Kaiming-uniform with ``a = √5`` (``nn.Linear``'s init: U(±1/√cols)), drawn on
    the CPU from ``generator`` so the stream does not depend on the device."""
    A = torch.empty(rows, cols, dtype=torch.float32)
    nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    return A.to(device=like.device, dtype=like.dtype)


class ReLoRALinear(AdaptedLinear):
    """``y = x Wᵀ + b + s·(x Aᵀ) Bᵀ``; ``W`` frozen (merges write into it), ``A``, ``B``, ``b`` trainable.

    The method's state is in persistent buffers, so ``model.state_dict()`` carries it: ``rng_state``
    (the stream of re-drawn ``A``s and pruning masks), ``steps_taken`` (optimizer steps through this
    layer: the restart clock), ``last_reset`` (the step of the last merge, −1 before the first) and
    ``restarts_done``.
    """

    method = "relora"
    state_buffers = ("rng_state", "steps_taken", "last_reset", "restarts_done")

    def __init__(
        self,
        linear: nn.Linear,
        rank: int,
        alpha: float,
        generator: torch.Generator,
        reset_every: int = 2000,
        restart_warmup: int = 100,
    ):
        super().__init__(linear.in_features, linear.out_features)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.reset_every, self.restart_warmup = reset_every, restart_warmup
        W = linear.weight.detach()
        self.weight = frozen(W.clone())  # a copy: merges write into it
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        # The stream's start, kept (not saved) so that `reset_parameters` can replay it on a model
        # built on the meta device, whose buffers `to_empty` leaves uninitialized.
        self._initial_rng_state = generator_state(generator)
        self.lora_A = nn.Parameter(kaiming_factor(rank, self.in_features, generator, W))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=W.dtype, device=W.device))
        self.register_buffer("rng_state", generator_state(generator))
        self.register_buffer("steps_taken", counter(0, W.device))
        self.register_buffer("last_reset", counter(-1, W.device))
        self.register_buffer("restarts_done", counter(0, W.device))

    @property
    def restarts(self) -> int:
        """Merge-and-reinit events so far."""
        return int(self.restarts_done)

    @property
    def schedule(self) -> RestartSchedule:
        """The restart clock, read from the buffers (a snapshot: change the buffers, not this)."""
        last = int(self.last_reset)
        return RestartSchedule(self.reset_every, self.restart_warmup, int(self.steps_taken), None if last < 0 else last)

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = s · B A`` (out × in): the update since the last merge."""
        return self.scale * (self.lora_B @ self.lora_A)

    def effective_weight(self) -> torch.Tensor:
        return self.weight + self.delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out.add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scale)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``W``, ``b`` as ``nn.Linear`` does, ``A`` Kaiming-uniform from the layer's stream, ``B = 0``
        (for a meta-device model after ``model.to_empty(device=...)``)."""
        reset_linear_(self.weight, self.bias)
        self.rng_state.copy_(self._initial_rng_state)
        with drawing(self.rng_state) as generator:
            self.lora_A.copy_(kaiming_factor(self.rank, self.in_features, generator, self.lora_A))
        self.lora_B.zero_()
        self.steps_taken.fill_(0)
        self.last_reset.fill_(-1)
        self.restarts_done.fill_(0)

    @torch.no_grad()
    def merge_and_reinit(self) -> None:
        """``W ← W + s·BA`` (summed in at least float32), then ``A`` Kaiming-uniform and ``B = 0``."""
        wide = torch.promote_types(self.weight.dtype, torch.float32)
        merged = torch.addmm(self.weight.to(wide), self.lora_B.to(wide), self.lora_A.to(wide), alpha=self.scale)
        self.weight.copy_(merged)
        with drawing(self.rng_state) as generator:
            self.lora_A.copy_(kaiming_factor(self.rank, self.in_features, generator, self.lora_A))
        self.lora_B.zero_()
        self.restarts_done.add_(1)

    @torch.no_grad()
    def check_finite(self, layer_name: str, step: int) -> None:
        """Before a step that merges: ``A``, ``B`` and their gradients must be finite.

        The merge writes ``s·BA`` into the frozen ``W``; a NaN there would poison ``W`` for good.
        Raised before the step, so nothing has changed when the error arrives.
        """
        for name in ("lora_A", "lora_B"):
            param = getattr(self, name)
            for what, tensor in (("gradient", param.grad), ("value", param)):
                if tensor is not None and not all_finite(tensor):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise ValueError(
                        f"layer {layer_name!r}: the {what} of {name} has {bad} non-finite value(s) "
                        f"(NaN or inf) at step {step}, which merges B·A into W; nothing was updated"
                    )

    def paper_counts(self) -> LayerCounts:
        """ReLoRA (Lialin et al. 2024, arXiv:2307.05695) counts as LoRA (Hu et al. 2021): frozen ``W``
        (mn) plus ``B`` (m×r) and ``A`` (r×n); trainable ``r(m+n)``, Adam ``2r(m+n)`` (the GaLore
        paper's Table 1 counts LoRA so too). Between restarts it is that layer: merging ``BA`` into
        ``W`` changes no size, and pruning Adam's state zeroes it without freeing it. The random
        stream and the restart clock are small state buffers (``state_buffers``), outside the count.
        """
        m, n, r = self.out_features, self.in_features, self.rank
        return LayerCounts.adam(m * n + r * (m + n), r * (m + n))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}, "
            f"restarts={self.restarts}"
        )


@torch.no_grad()
def prune_state(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, mode: str, ratio: float, generator: torch.Generator
) -> int:
    """Zero part of ``param``'s optimizer state in place (one mask for all of its state tensors).

    Returns the number of entries (per state tensor) that were zeroed. State that is not shaped
    like the parameter (Adam's ``step``) is left alone.
    """
    state = optimizer.state.get(param)
    if not state:
        return 0
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == param.shape}
    if not tensors:
        return 0
    n = param.numel()
    n_zero = n if mode == "reset" else min(n, round_half_up(ratio * n))
    if n_zero == 0:
        return 0
    if n_zero == n:
        for t in tensors.values():
            t.zero_()
        return n
    if mode == "random":
        dropped = torch.randperm(n, generator=generator)[:n_zero].to(param.device)
    else:  # magnitude: drop the entries with the smallest first moment
        key = next((k for k in ("exp_avg", "momentum_buffer") if k in tensors), next(iter(tensors)))
        dropped = torch.topk(tensors[key].abs().flatten().float(), n_zero, largest=False).indices
    keep = torch.ones(n, dtype=torch.bool, device=param.device)
    keep[dropped] = False
    for t in tensors.values():
        t.mul_(keep.view(param.shape).to(t.dtype))
    return n_zero


@dataclass
class RestartSchedule:
    """The method's clock: optimizer steps taken, and the step of the last merge-and-reinit.

    The layers keep it in buffers (``steps_taken``, ``last_reset``); this is a readable snapshot.
    """

    reset_every: int
    restart_warmup: int
    step: int = 0
    last_reset: int | None = None

    def multiplier(self) -> float:
        """The LR multiplier of the *next* step: ``j / restart_warmup`` for its j-th step after a reset."""
        if self.last_reset is None or self.restart_warmup == 0:
            return 1.0
        return min(1.0, (self.step - self.last_reset) / self.restart_warmup)


@register("relora")
class ReLoRA(Method):
    """LoRA that is merged into ``W`` and restarted every ``reset_every`` steps (Lialin et al. 2024).

    Options: ``rank`` (8); ``alpha`` (None → rank, s = 1); ``reset_every`` (T = 2000 optimizer
    steps); ``prune`` ("random" | "magnitude" | "reset") and ``prune_ratio`` (0.999; ReLoRA\\* uses
    0.99) for the LoRA optimizer state at each reset; ``restart_warmup`` (100 steps of linear LR
    re-warm-up after each reset, 0 = none; must be < reset_every); ``seed`` (None: from torch's
    global generator). Merges, re-inits, pruning and the jagged LR multiplier are installed by
    :func:`spectrallab.optimizer`. Trainable per layer: ``r(m + n)`` (+ bias).
    """

    options = {
        "rank": rank_option(),
        "alpha": alpha_option(),
        "reset_every": Option(2000, "T, optimizer steps between two merge-and-reinits", kind="int", low=1),
        "prune": Option(
            "random",
            "how the LoRA optimizer state is pruned at a reset (Algorithm 1)",
            kind="choice",
            choices=PRUNE_MODES,
        ),
        "prune_ratio": Option(
            0.999, "the share of that state zeroed at a reset (ReLoRA* uses 0.99)", kind="float", low=0, high=1
        ),
        # The upper bound is another option's: check_options enforces the whole range.
        "restart_warmup": Option(
            100, "steps of linear LR re-warm-up after each reset (0: none)", kind="int", low=0, high="reset_every − 1"
        ),
        "seed": Option(
            None,
            "seeds the layers' streams (A, re-drawn As, pruning masks) with the layer name",
            kind="seed",
            none="drawn from torch's global generator",
        ),
    }
    freezes_others = False
    init_reads_weight = None  # A random, B = 0: a meta-device model is fine (reset_parameters)
    needs_optimizer_hooks = (
        "ReLoRA's restarts (merge BA into W and re-initialize every reset_every steps), "
        "the pruning of the optimizer state and the jagged LR schedule — without them it is "
        "plain LoRA with a trainable rest of the model"
    )

    @classmethod
    def period_options(cls, period: int) -> dict:
        """Every ``period`` steps (used by the Playground's "period" knob)."""
        return {"reset_every": period, "restart_warmup": min(period - 1, max(1, period // 10))}

    def fsdp_refusal(self) -> str:
        """The restart reads and writes whole matrices outside the forward pass; not done for shards."""
        return (
            "ReLoRA's merge needs the whole matrix (W ← W + s·BA, then a new random A) and its pruning "
            "of the optimizer state draws one mask over each whole moment, which spectrallab does not "
            "gather for FSDP2's shards"
        )

    def check_options(self, where: str) -> None:
        """The restart warm-up must end before the next reset: ``0 ≤ restart_warmup < reset_every``."""
        T, W = self.config["reset_every"], self.config["restart_warmup"]
        if not 0 <= W < T:
            raise ValueError(
                f"{where}: restart_warmup={W} is outside the allowed range "
                f"[0, {T - 1}] (it must be shorter than reset_every={T})"
            )

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        check_rank(layer_name, linear, self.config["rank"])  # the options themselves: validate_options

    def adapt(self, layer_name: str, linear: nn.Linear) -> ReLoRALinear:
        c = self.config
        if not hasattr(self, "_seed"):  # one draw per apply, so torch.manual_seed before apply fixes all
            self._seed = resolve_seed(c["seed"])
        alpha = float(c["rank"] if c["alpha"] is None else c["alpha"])
        return ReLoRALinear(
            linear, c["rank"], alpha, layer_generator(self._seed, layer_name), c["reset_every"], c["restart_warmup"]
        )

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, layers: dict[str, ReLoRALinear]) -> None:
        """Hooks on ``optimizer``; the clock they read is each layer's buffers (``steps_taken``,
        ``last_reset``), so a checkpoint carries it and an optimizer built again mid-run continues
        the restart schedule (with fresh moments, as any new torch optimizer)."""
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        mine = {
            name: layer
            for name, layer in layers.items()
            if id(layer.lora_A) in in_optimizer or id(layer.lora_B) in in_optimizer
        }
        if not mine:
            return
        c = self.config
        T, warmup = c["reset_every"], c["restart_warmup"]
        mode, ratio = c["prune"], float(c["prune_ratio"])
        first = next(iter(mine.values()))

        def clocks() -> list[int]:
            """Steps taken by each layer (one device read for all of them)."""
            return torch.stack([layer.steps_taken for layer in mine.values()]).tolist()

        def multiplier() -> float:  # the first layer's clock: the layers of one method step together
            taken, last = torch.stack([first.steps_taken, first.last_reset]).tolist()
            return RestartSchedule(T, warmup, taken, None if last < 0 else last).multiplier()

        def check(opt):
            for (name, layer), taken in zip(mine.items(), clocks()):
                if (taken + 1) % T == 0:
                    layer.check_finite(name, taken + 1)

        def merge_and_restart(opt, args, kwargs):
            for layer, taken in zip(mine.values(), clocks()):
                layer.steps_taken.add_(1)
                if (taken + 1) % T:
                    continue
                layer.merge_and_reinit()
                with drawing(layer.rng_state) as generator:
                    for param in (layer.lora_A, layer.lora_B):
                        prune_state(opt, param, mode, ratio, generator)
                layer.last_reset.fill_(taken + 1)

        add_lr_multiplier(optimizer, multiplier)
        add_step_check(optimizer, check)
        # Registered after add_lr_multiplier's restore hook: the merge sees the step already taken.
        optimizer.register_step_post_hook(merge_and_restart)
