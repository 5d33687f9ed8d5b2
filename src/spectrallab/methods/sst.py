"""SST — Sparse Spectral Training (Zhao, Zhang, Li, Liu & Cannistraci, "Sparse Spectral Training and
Inference on Euclidean and Hyperbolic Neural Networks", arXiv:2405.15481, ICML 2025).

A pre-training method. Every targeted weight is replaced by its own SVD, computed once at apply
time from the (random or given) weight, so the network starts exactly where it was::

    W = U diag(Σ) Vh            U: m × k,  Σ: k (≥ 0),  Vh: k × n,  k = min(m, n)
    y = x (U diag(Σ) Vh)ᵀ + b

and trained in the spectral domain:

* **All singular values, every step.** Σ is a trainable vector of length k; after each optimizer
  step ``Σ ← max(Σ, 0)`` (a singular value is a magnitude).
* **Only r singular vectors at a time.** The paper's *iteration* — here a **period** of
  ``resample_every`` steps (T3; the paper uses 200 in translation) — trains the columns ``U[:, i]``
  and the matching rows ``Vh[i]`` for a set of r indices S; the other k − r vectors are frozen.
  After each step the trained vectors are renormalized to unit length, so a vector is only a
  direction and its magnitude lives in Σ_i.
* **Sampling balances exploitation and exploration.** S is drawn by multinomial sampling *without
  replacement* (r distinct indices) weighted by the singular values (the abstract: "a multinomial
  sampling method weighted by the magnitude of the singular values"), here mixed with a uniform term::

      p_i = (1 − μ) · Σ_i / Σ_j Σ_j + μ / k          μ = ``uniform_mix`` = ½ by default

  so large directions are revisited often (exploitation) and every direction has a chance
  (exploration). The ½ mix is taken from a summary of the paper, not from its text (see the choices
  below); ``uniform_mix=0`` is the plain Σ-weighted law of the abstract.
  ``sampling="uniform" | "sequential" | "top"`` are alternatives for an ablation (equal chances; the
  indices in turn, r at a time, so all k are visited in ⌈k/r⌉ periods; always the r largest — a
  LoRA-like pure exploitation); which ones the paper's ablation (its Appendix I) compares, and how
  they rank there, is also from that summary.
* **Enhanced gradient.** The gradient of a sampled vector is ``∂L/∂U_{·i} = (∂L/∂W) V_{·i} Σ_i``
  (and ``∂L/∂V_{·i} = (∂L/∂W)ᵀ U_{·i} Σ_i``): a direction belonging to a small singular value
  barely moves. SST drops the factor Σ_i::

      ∇̃U_{·i} = (∂L/∂W) V_{·i},        ∇̃V_{·i} = (∂L/∂W)ᵀ U_{·i}

  decoupling how fast a direction turns from how large it is. The layer's backward pass computes
  it directly from ``G = ∂L/∂W`` (:class:`SpectralLinear`), so it is what ``.grad`` holds.
  ``gradient="default"`` returns the plain chain-rule gradient instead, for comparison.
* **Re-SVD after each round.** Renormalized vectors drift away from orthogonality; after a round of
  ``periods_per_round`` periods (the paper's T2 iterations per round; default ⌈k/r⌉, one sweep's
  worth of periods) the layer re-factorizes its own current weight, ``U, Σ, Vh ← SVD(U diag(Σ) Vh)``
  — the function is unchanged, U and Vh are orthonormal again and Σ is sorted again.
* **Inference** merges back to a dense ``W`` (:func:`spectrallab.merge`).

**Memory-efficient layout** (the paper's implementation section): the r active vectors are
Parameters ``U_active`` (m × r) and ``Vh_active`` (r × n) — the only vectors with optimizer state —
next to ``S`` (Σ, all k, trainable), and the k − r inactive ones are frozen Parameters
``U_frozen``, ``Vh_frozen`` (``requires_grad=False``: they move with ``.to()`` and are saved, but no
optimizer sees them). The buffers ``active_index`` / ``frozen_index`` say which singular index each
slot holds. A new sample *swaps* vectors between the blocks (data copied into the same Parameter
tensors, so the optimizer stays valid); a vector that stays active keeps its slot. Trainable per
layer: ``r(m + n) + k`` (+ the bias), optimizer state O(r(m + n) + k).

**Forward and backward** (:class:`SpectralLinear`, a ``torch.autograd.Function``): two exact ways
to compute the layer and SST's gradients, chosen per call from their multiply-add counts. *Factored*
(``y = ((x Vhᵀ) ⊙ Σ) Uᵀ``, backward through ``grad_y U``) never forms an m × n matrix and costs
about 5·T·d² for T tokens through a square d × d layer; *rebuild* builds the dense
``W = U_active diag(Σ_active) Vh_active + U_frozen diag(Σ_frozen) Vh_frozen`` (d³ multiply-adds,
independent of the batch), applies it with one ``F.linear``, and in backward builds it again for
``∂L/∂x`` and forms ``G = grad_yᵀ x`` once: about 3·T·d² + 3·d³. Full-rank training costs 3·T·d², so
SST's step is ≈ 5/3 of it for short batches and 1 + d/T for long ones (the forward switches at
T = d, the backward at T ≈ 2d; the counts, and why three d³ products remain, are in
:class:`SpectralLinear`). Below 8·m tokens W is *not* kept for backward: the graph holds only the
input and the factors the layer stores anyway. Plain autograd through ``F.linear(x, U diag(Σ) Vh)``
would keep one dense m × n weight per layer from forward to backward — as much as the full-rank
model's weights again. Measured (``benchmarks/sst_memory.py``, tiny GPT at d_model 1024, 4096 tokens
per batch, r = 64, CPU): the memory a training step adds is 0.86× full rank's, against 0.95× through
plain autograd. From 8·m tokens on (``keep_weight="auto"``, :func:`keeps_weight`) the forward's W is
kept for backward, which saves backward's rebuild (one of the three d³ products: the step goes from
≈ 1 + d/T to ≈ 1 + 2d/(3T) times full rank's) for at most an eighth of the input the layer saves
anyway; ``keep_weight="never"`` never keeps it, ``"always"`` whenever the forward built it. The
gradients are the same to the bit either way. The step-time ratios to full rank over T are recorded
by ``benchmarks/step_scaling.py``.

Everything that changes *optimization* is installed by :func:`spectrallab.optimizer` (step hooks,
see :meth:`SST.attach_optimizer`), so a hand-written loop calling ``opt.step()`` runs the whole
algorithm: clamp and renormalize (post-step), and every T3 steps the swap, the optimizer-state
reset and the re-SVD, plus an LR warm-up at the start of each period after the first. (The enhanced
gradient needs no hook: backward produced it.)

**What was checked against the paper, and what rests on a summary.** Read here: the arXiv abstract
(2405.15481: all singular values updated; singular vectors selected "through a multinomial
sampling method weighted by the magnitude of the singular values"; SVD to initialize and
periodically reinitialize; LLaMA-1.3B's 97.4 % at 18.7 % trainable), and, from the paper's
republication in parts (HackerNoon, 2025), its table of contents (sections 4.1–4.6 — 4.2 "Gradient
Update of U, Vᵀ with Σ", 4.4 "SST Balances Exploitation and Exploration", 4.5 "Memory-Efficient
Implementation"; appendices A "Algorithm of Sparse Spectral Training", D "Advantage of Enhanced
Gradient over Default Gradient", I "Ablation Study") and the setup of its experiments (OPT on
OpenWebText with r = 64). *Not* read here: the text of sections 4.2–4.5, Algorithm 1, Appendices D
and I, and the result tables. The details below that depend on those parts were fixed from a detailed
summary of the ICML 2025 version — the sampling law ``p(i) = ½(1/k + Σ_i/Σ_j Σ_j)`` (item 1), the
re-SVD after each round (item 4), the momentum reset at each new sample followed by a warm-up
(items 5, 6), the ablation's ranking of the sampling modes (multinomial ahead of uniform,
sequential and top-r), and SVD's 0.5–0.8 % share of training time — and have not been verified
against the paper's text or the authors' repository
(github.com/biomedical-cybernetics/sparse-spectral-training), which could not be read either:

1. *Uniform term* (from the summary): p_i mixes ½ uniform and ½ Σ-proportional; ``uniform_mix=0``
   gives the plain Σ-proportional multinomial that the abstract describes.
2. *Replacement*: without — the active block holds r distinct vectors.
3. *Shared indices*: U and Vh use the same index set (a singular *triplet* is trained or not).
4. *Re-SVD*: once per round of ``periods_per_round`` periods (Algorithm 1: T1 rounds × T2
   iterations × T3 steps, re-SVD closing each round); default T2 = ⌈k/r⌉, per layer.
5. *Optimizer-state reset*: when vectors are swapped in, their slots' optimizer state is zeroed
   (every moment-like tensor — Adam's ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, SGD's
   ``momentum_buffer`` — along those columns of ``U_active`` / rows of ``Vh_active``); vectors that
   stay active keep theirs; the step counter is kept (it is per tensor), as ReLoRA's reference
   code does when it resets its factors' state — which is why the first steps after a reset are
   large and a warm-up follows. After a re-SVD every vector and Σ's indexing change, so the state of ``U_active``,
   ``Vh_active`` and ``S`` is zeroed entirely.
6. *Warm-up*: a linear LR warm-up over the first ``warmup`` steps of every period **from the
   second on** — the periods that start with swapped-in vectors whose moments were just zeroed
   while Adam's step counter (and so its bias correction) was kept, which makes their first steps
   large — multiplier ``(s + 1)/warmup`` at the s-th step of such a period
   (:func:`period_warmup`). The first period gets none from SST: its optimizer state is fresh
   everywhere, Adam's bias correction handles that, and its warm-up is the training loop's own
   schedule (``sl.fit(schedule=sl.warmup_cosine(...))``, a Trainer's warm-up); SST ramping it too
   would multiply two ramps. Applied to **all** parameter groups (the paper schedules one global
   learning rate), through :func:`spectrallab.optim.add_lr_multiplier` so it composes with the
   user's scheduler.
7. *Enhanced gradient*: formed directly, ``∇̃U_active = G V_active`` and ``∇̃Vh_active = U_activeᵀ G``
   with ``G = ∂L/∂W``, by the backward pass, and stored in ``.grad``. So ``.grad`` *is* the
   gradient the optimizer uses: clipping by the loop before ``opt.step()`` (``sl.fit(clip=...)``,
   ``clip_grad_norm_``), gradient-norm logging and accumulation all act on the enhanced gradient,
   and the clip norm bounds the update direction of the vectors. The paper replaces the gradient of
   a sampled vector by the enhanced one; clipping the Σ-scaled gradient and dividing afterwards
   would let the used gradient exceed the clip norm by 1/Σ_i. It needs no division by Σ_i, so it is
   continuous at Σ_i = 0: a clamped Σ_i's direction keeps learning (G v_i), although it has no
   effect on the output until Σ_i grows again. (Dividing the Σ-scaled gradient by Σ_i jumps to 0
   there, so runs that round a clamped Σ_i differently — gradient accumulation vs one batch — moved
   that direction differently.)
8. *Weight decay*: none special. The optimizer's decoupled decay on Σ is exactly decoupled decay of
   ``W = U diag(Σ) Vh`` (when U, Vh are orthonormal); on the active vectors it is undone by the
   renormalization (up to a 1/(1 − lr·λ) rescaling of that step).

The SVD runs in float32 (bf16/fp16 weights are upcast; float64 stays float64). The factors U, Vh are
stored in the weight's dtype and the forward computes in it, but Σ is a float32 Parameter (float64
for a float64 weight): it receives a small update every step, which bf16's 8 significant bits would
round away, and the re-SVD multiplies the factors out in Σ's precision. (``model.to(torch.bfloat16)``
*after* ``sl.apply`` casts Σ too, as it casts every floating Parameter; apply SST to the bf16 model
instead.) A checkpoint written when Σ had the weight's dtype loads as usual: ``load_state_dict``
copies into the float32 Parameter.

The sampling generator is seeded from ``seed`` and the layer's name: runs are reproducible and
layers sample independently. ``layer.history`` records, per period, the first step, the active
indices, Σ at that moment, and whether the period began with a re-SVD.

**State lives with the model.** The generator's state and the clock are persistent buffers of each
layer (``rng_state``, ``steps_taken``, ``periods_done``, ``draws_done``, ``resvds_done``), not
Python attributes of the optimizer's hooks: ``model.state_dict()`` + ``optimizer.state_dict()``
resume a run bit for bit, and an optimizer built again mid-run continues the schedule (periods end
at the same steps). ``history`` is a log for plots, not state: after ``load_state_dict`` it starts
again with one entry for the loaded state. A step that ends a period first checks the gradients
and factors it will resample and re-factorize: a non-finite value raises ``ValueError`` naming the
layer and the step before anything is updated.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .. import linalg
from ..optim_hooks import add_lr_multiplier, add_step_check
from ..shards import is_sharded, local, modify_whole_, split_by_rows, sum_over_shards, whole, whole_parameters
from .base import (
    AdaptedLinear,
    LayerCounts,
    Method,
    check_finite_weight,
    check_rank,
    counter,
    drawing,
    frozen,
    generator_state,
    layer_generator,
    register,
)
from .options import Option, rank_option

SAMPLINGS = ("multinomial", "uniform", "sequential", "top")
GRADIENTS = ("enhanced", "default")
KEEP_WEIGHTS = ("auto", "always", "never")
# "auto" keeps the dense W from forward to backward when it is at most this fraction of the input
# the layer saves for backward anyway (m·n against T·n elements: from T ≥ 8·m tokens on).
KEEP_WEIGHT_SHARE = 1 / 8


def keeps_weight(policy: str, tokens: int, m: int) -> bool:
    """Whether a forward that built the dense W (the *rebuild* path) keeps it for backward.

    ``"never"``: never (the least memory: backward builds W again). ``"always"``: whenever the
    forward built it. ``"auto"``: when W's m·n elements are at most :data:`KEEP_WEIGHT_SHARE` of the
    T·n elements of the input saved for backward, i.e. from ``T ≥ 8·m`` tokens, where the saved
    rebuild (m·k·n multiply-adds) is worth a few per cent of the step and W a small share of what
    the layer keeps anyway.
    """
    if policy == "always":
        return True
    if policy == "never":
        return False
    return m <= KEEP_WEIGHT_SHARE * tokens


# Optimizer state that does not describe the parameter's entries (Adam's step count, ...): never zeroed.
_NOT_MOMENTS = ("step",)
# The parameters the hooks read whole at a period's end: all five (swaps index columns and rows by
# singular index; the re-SVD multiplies them out). Under FSDP2 they are gathered for that
# (spectrallab.shards); in one process nothing changes. The projection after every other step works
# on each rank's rows (SSTLayer.project), and gathers the trained three only for an unusual split.
_TRAINED = ("U_active", "Vh_active", "S")
_SPECTRAL = _TRAINED + ("U_frozen", "Vh_frozen")


def sampling_probabilities(S: torch.Tensor, uniform_mix: float = 0.5) -> torch.Tensor:
    """``p_i = (1 − μ) Σ_i / Σ_j Σ_j + μ / k`` (float64, sums to 1; uniform when all Σ are 0)."""
    S = S.detach().double().clamp_min(0).cpu()
    k = S.numel()
    total = S.sum()
    proportional = S / total if total > 0 else torch.full_like(S, 1.0 / k)
    return (1 - uniform_mix) * proportional + uniform_mix / k


def draw_indices(
    S: torch.Tensor,
    rank: int,
    sampling: str,
    *,
    uniform_mix: float = 0.5,
    generator: torch.Generator | None = None,
    draw: int = 0,
) -> torch.Tensor:
    """r distinct singular indices (sorted, int64, CPU) for one period.

    ``draw`` numbers the draws of a layer (0, 1, ...); only ``"sequential"`` uses it: draw t takes
    ``t·r, …, t·r + r − 1`` (mod k).
    """
    k = S.numel()
    if sampling == "multinomial":
        p = sampling_probabilities(S, uniform_mix)
        if int((p > 0).sum()) < rank:  # μ = 0 and fewer than r nonzero Σ: the zero ones fill the rest
            p = p.clamp_min(1e-12)
        chosen = torch.multinomial(p, rank, replacement=False, generator=generator)
    elif sampling == "uniform":
        chosen = torch.randperm(k, generator=generator)[:rank]
    elif sampling == "sequential":
        chosen = (torch.arange(rank) + draw * rank) % k
    elif sampling == "top":
        chosen = torch.topk(S.detach().float().cpu(), rank).indices
    else:
        raise ValueError(f"sampling={sampling!r} is not one of {', '.join(map(repr, SAMPLINGS))}")
    return chosen.sort().values


def warmup_multiplier(step_in_period: int, warmup: int) -> float:
    """LR multiplier for the ``step_in_period``-th step (0-based) of a period: ``(s + 1)/warmup``, then 1."""
    return 1.0 if step_in_period >= warmup else (step_in_period + 1) / warmup


def period_warmup(steps_taken: int, period: int, warmup: int) -> float:
    """SST's LR multiplier for the next step, after ``steps_taken`` steps: 1 throughout the first period
    (its warm-up is the training loop's own schedule), then :func:`warmup_multiplier` at the start of
    every later period — the periods that begin with swapped-in vectors and reset optimizer state."""
    return 1.0 if steps_taken < period else warmup_multiplier(steps_taken % period, warmup)


def dense_weight(
    U_active: torch.Tensor,
    Vh_active: torch.Tensor,
    S: torch.Tensor,
    U_frozen: torch.Tensor,
    Vh_frozen: torch.Tensor,
    active_index: torch.Tensor,
    frozen_index: torch.Tensor,
) -> torch.Tensor:
    """``U diag(Σ) Vh`` from the two blocks, in the factors' dtype (Σ, kept in float32, is cast to it).

    The one place the dense weight is formed: the forward pass, the backward pass's rebuild and
    :meth:`SSTLayer.effective_weight` all call it, so ``sl.merge`` writes exactly the weight the forward used.
    """
    dtype = U_active.dtype
    inactive = (U_frozen * S[frozen_index].to(dtype)) @ Vh_frozen
    return torch.addmm(inactive, U_active * S[active_index].to(dtype), Vh_active)


def forward_macs(tokens: int, m: int, n: int, k: int) -> dict[str, int]:
    """Multiply-adds of :class:`SpectralLinear`'s forward for ``tokens`` rows, by path.

    ``"factored"``: ``(x Vhᵀ ⊙ Σ) Uᵀ`` — T·k·(m + n). ``"rebuild"``: ``W = U diag(Σ) Vh`` then
    ``x Wᵀ`` — m·k·n + T·m·n.
    """
    return {"factored": tokens * k * (m + n), "rebuild": m * k * n + tokens * m * n}


def backward_macs(
    tokens: int,
    m: int,
    n: int,
    k: int,
    r: int,
    need_x: bool,
    need_u: bool,
    need_vh: bool,
    need_s: bool,
    weight_kept: bool = False,
) -> dict[str, int]:
    """Multiply-adds of :class:`SpectralLinear`'s backward for ``tokens`` rows, by path, counting only
    the gradients asked for (see the class docstring for the products). ``weight_kept``: the forward
    kept its dense W (:func:`keeps_weight`), so the rebuild path does not build it again."""
    T = tokens
    factored = rebuild = 0
    # factored: Q = g U (all k if ∂x or ∂Σ is asked, else the active r), ∂x = (Q ⊙ Σ) Vh,
    # B = Qᵀ x (k × n for ∂Σ, which contains ∇Vh_active; r × n for ∇Vh_active alone), ∇U_active = gᵀ (x Vh_activeᵀ)
    if need_x or need_s:
        factored += T * m * k
    elif need_vh:
        factored += T * m * r
    if need_x:
        factored += T * k * n
    if need_s:
        factored += T * k * n
    elif need_vh:
        factored += T * r * n
    if need_u:
        factored += T * r * (m + n)
    # rebuild: W again and ∂x = g W; G = gᵀ x once; G Vhᵀ over all k for ∂Σ (its active columns are
    # ∇U_active), or over the active r alone; ∇Vh_active = U_activeᵀ G
    if need_x:
        rebuild += (0 if weight_kept else m * k * n) + T * m * n
    if need_u or need_vh or need_s:
        rebuild += T * m * n
    if need_s:
        rebuild += m * n * k
    elif need_u:
        rebuild += m * n * r
    if need_vh:
        rebuild += r * m * n
    return {"factored": factored, "rebuild": rebuild}


def cheaper(macs: dict[str, int]) -> str:
    """The path with fewer multiply-adds; a tie goes to ``"factored"`` (it forms no m × n matrix)."""
    return "factored" if macs["factored"] <= macs["rebuild"] else "rebuild"


def _slot_order(U_active, Vh_active, S, U_frozen, Vh_frozen, active_index, frozen_index):
    """``(U, Vh, Σ)`` over all k directions in slot order (the r active ones first): m × k, k × n, k.

    Copies of the factors (m·k + k·n elements, freed by the caller after its products): the
    factored path's working layout, so that each of its products is one matrix product of width k.
    """
    U = torch.cat([U_active, U_frozen], dim=1)
    Vh = torch.cat([Vh_active, Vh_frozen], dim=0)
    return U, Vh, S[torch.cat([active_index, frozen_index])]


class SpectralLinear(torch.autograd.Function):
    """``y = x Wᵀ + b`` with ``W = U diag(Σ) Vh``, whose backward returns SST's gradients directly.

    The gradients (G = ∂L/∂W = grad_yᵀ x, over all leading batch dims; ``u_i``, ``v_i`` the i-th
    column of U and row of Vh)::

        ∂L/∂x = grad_y W                                         ∂L/∂b = Σ_tokens grad_y
        ∂L/∂Σ_i = u_iᵀ G v_i   (all k, active and frozen)      ∇̃U_active = G V_active,  ∇̃Vh_active = U_activeᵀ G

    with the plain chain-rule factor Σ_i on the two vector gradients for ``gradient="default"``.

    **Two ways to compute them, chosen per call by their multiply-add counts** (:func:`forward_macs`,
    :func:`backward_macs`; T tokens, an m × n layer, k = min(m, n), r active vectors). For a square
    d × d layer (k = d) full-rank training costs 3·T·d² (forward, ∂x, G):

    * *factored* — never forms an m × n matrix. Forward ``y = ((x Vhᵀ) ⊙ Σ) Uᵀ``: T·k·(m + n) = 2Td².
      Backward with ``Q = grad_y U`` (T × k): ``∂L/∂x = (Q ⊙ Σ) Vh``, ``B = Qᵀ x = Uᵀ G`` (k × n)
      whose row sums of ``B ⊙ Vh`` are ∂Σ and whose active rows are ∇̃Vh_active, and
      ``∇̃U_active = grad_yᵀ (x Vh_activeᵀ)``: 3Td² + 2Tdr. In all ≈ 5Td².
    * *rebuild* — forward builds ``W`` (m·k·n = d³, independent of T) and applies it (Td²);
      backward builds ``W`` again for ``∂L/∂x`` (d³ + Td²), forms ``G`` (Td²) and ``G Vhᵀ`` over all
      k (d³; its active columns are ∇̃U_active), then ``U_activeᵀ G`` (d²r): 2Td² + 2d³ + d²r. In all
      ≈ 3Td² + 3d³.

    Forward and backward choose independently — a forward that rebuilds may be followed by a
    factored backward (for d < T < 1.8d) — because their counts cross at different T: the forward
    at T = d (2Td² vs Td² + d³), the backward at T = (2d + r)/(1 + 2r/d) ≈ 1.8d at r = d/16
    (3Td² + 2Tdr vs 2Td² + 2d³ + d²r). So at d = 1024, r = 64 the layer costs, relative to full
    rank's 3Td²: 1.71× at T = d/2 and at T = d (both factored: (5 + 2r/d)/3), 1.51× at 2d, 1.26× at
    4d, 1.13× at 8d and 1.06× at 16d (both rebuild: ≈ 1 + d/T). Measured on one CPU thread
    (``benchmarks/step_scaling.py``, 2 such layers): 1.58, 1.68, 1.50, 1.24, 1.11, 1.06× — within
    a few % of the counts, a little below because full rank's Adam and the elementwise work weigh
    on its time too. Only the gradients asked for are counted and computed
    (``needs_input_grad``: a first layer's ∂x, a frozen U, Vh or Σ cost nothing), so the choice
    follows them too. The counts are exact multiply-adds, not calibrated timings: the thin products
    of the factored path (r = 64 columns) run at a lower rate than square ones on some BLAS, which
    moves the measured crossing a little (``benchmarks/step_scaling.py`` records both).

    **Why three d³ products remain at large T, and when one goes.** Each is forced by a constraint:
    (1) the forward's ``x Wᵀ`` is cheaper through W than factored once T > d; (2) backward needs W
    again for ``grad_y W``, and unless the forward kept it (below) it builds W again: keeping it
    costs a dense m × n tensor per layer from forward to backward (plain autograd through
    ``F.linear(x, U diag(Σ) Vh)`` keeps one per layer: as much memory as the full-rank model's
    weights again; ``benchmarks/sst_memory.py``), and the alternative, factored, is 2Td²; (3) ∂Σ is k
    bilinear forms ``u_iᵀ G v_i`` of a dense G — m·n·k through G, or 2Td² through Q and x. Using
    ``Uᵀ U = I`` to shortcut any of them would be wrong: the trained vectors drift from
    orthogonality between re-SVDs. So SST's step is ``1 + d/T`` times full rank's in multiply-adds at
    large T when W is not kept, and (5 + 2r/d)/3 at small T. The kept W is worth its memory only
    where it is small next to what the layer saves anyway — the input, T × n: with
    ``keep_weight="auto"`` the forward keeps W from T ≥ 8·m tokens (W at most an eighth of the
    input; :func:`keeps_weight`), and (2) goes: ``1 + 2d/(3T)`` there — 1.09× at 8d, 1.04× at 16d
    for d = 1024, r = 64. The kept W is the tensor backward would have built, so the gradients are
    bit-identical to the rebuilt ones.

    Under autocast the backward works in the dtype of ``grad_y`` and casts each gradient back to its
    input's dtype; ∂Σ's products are summed in Σ's own (float32) precision. Not twice differentiable
    (``once_differentiable``): SST needs none, and double backward raises instead of returning a
    wrong answer.
    """

    @staticmethod
    def forward(
        ctx, x, U_active, Vh_active, S, U_frozen, Vh_frozen, bias, active_index, frozen_index, enhanced, keep_weight
    ):
        # Tokens as rows of one matrix, folded once here: a non-contiguous x (attention heads merged
        # by a transpose) is copied once, and that copy is what backward reads.
        tokens = x.reshape(-1, x.shape[-1])
        m, n, k = U_active.shape[0], Vh_active.shape[1], S.numel()
        kept = None  # the dense W, when it is kept for backward (keeps_weight)
        if cheaper(forward_macs(tokens.shape[0], m, n, k)) == "factored":
            # Active and frozen vectors side by side (slot order; the sum over directions does not
            # care): two products of full width k rather than four, one of them only r wide.
            U, Vh, sigma = _slot_order(U_active, Vh_active, S, U_frozen, Vh_frozen, active_index, frozen_index)
            P = F.linear(tokens, Vh)  # x Vhᵀ, T × k
            y = F.linear(P * sigma.to(P.dtype), U, bias)
            del U, Vh, P
        else:
            W = dense_weight(U_active, Vh_active, S, U_frozen, Vh_frozen, active_index, frozen_index)
            y = F.linear(tokens, W, bias)
            if keeps_weight(keep_weight, tokens.shape[0], m):
                kept = W
            del W
        ctx.save_for_backward(tokens, U_active, Vh_active, S, U_frozen, Vh_frozen, active_index, frozen_index, kept)
        ctx.enhanced, ctx.x_shape, ctx.x_dtype = enhanced, x.shape, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.view(*x.shape[:-1], m)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        tokens, U_a, Vh_a, S, U_f, Vh_f, active_index, frozen_index, W = ctx.saved_tensors
        need_x, need_u, need_vh, need_s = ctx.needs_input_grad[:4]
        need_b = ctx.needs_input_grad[6]
        m, n, k, r = U_a.shape[0], Vh_a.shape[1], S.numel(), U_a.shape[1]
        g = grad_y.reshape(-1, m)  # tokens × m, folded once
        grad_b = g.sum(0).to(ctx.bias_dtype) if need_b else None
        macs = backward_macs(g.shape[0], m, n, k, r, need_x, need_u, need_vh, need_s, weight_kept=W is not None)
        if cheaper(macs) == "factored":
            grad_x, grad_u, grad_vh, grad_s = SpectralLinear._factored(
                ctx, g, tokens, U_a, Vh_a, S, U_f, Vh_f, active_index, frozen_index, need_x, need_u, need_vh, need_s
            )
        else:
            grad_x, grad_u, grad_vh, grad_s = SpectralLinear._rebuild(
                ctx, g, tokens, U_a, Vh_a, S, U_f, Vh_f, active_index, frozen_index, need_x, need_u, need_vh, need_s, W
            )
        del W
        if grad_x is not None:
            grad_x = grad_x.to(ctx.x_dtype).view(ctx.x_shape)
        return grad_x, grad_u, grad_vh, grad_s, None, None, grad_b, None, None, None, None

    @staticmethod
    def _factored(ctx, g, tokens, U_a, Vh_a, S, U_f, Vh_f, active_index, frozen_index, need_x, need_u, need_vh, need_s):
        """Through ``Q = g U`` and ``B = Qᵀ x = Uᵀ G``: no m × n matrix (the class docstring's *factored*)."""
        dtype, r = g.dtype, U_a.shape[1]
        x = tokens.to(dtype)
        grad_x = grad_u = grad_vh = grad_s = None
        if need_x or need_s:  # all k directions, in slot order: active first
            U, Vh, sigma = _slot_order(U_a, Vh_a, S, U_f, Vh_f, active_index, frozen_index)
            Q = g @ U.to(dtype)  # g U, T × k
        elif need_vh:
            Q = g @ U_a.to(dtype)  # g U_active, T × r
        if need_x:
            grad_x = (Q * sigma.to(dtype)) @ Vh.to(dtype)
        if need_s:
            B = Q.T @ x  # Uᵀ G, k × n
            # u_iᵀ G v_i = Σ_j (Uᵀ G)_ij Vh_ij, summed in Σ's (float32) precision
            grad_s = torch.empty_like(S)
            grad_s[torch.cat([active_index, frozen_index])] = (B.to(S.dtype) * Vh.to(S.dtype)).sum(1)
            B_a = B[:r]
        elif need_vh:
            B_a = Q[:, :r].T @ x  # U_activeᵀ G, r × n (Q's first r columns are g U_active)
        if need_vh:
            grad_vh = (B_a if ctx.enhanced else B_a * S[active_index].to(dtype)[:, None]).to(Vh_a.dtype)
        if need_u:
            GV = g.T @ (x @ Vh_a.T.to(dtype))  # G V_active = gᵀ (x V_active), m × r
            grad_u = (GV if ctx.enhanced else GV * S[active_index].to(dtype)).to(U_a.dtype)
        return grad_x, grad_u, grad_vh, grad_s

    @staticmethod
    def _rebuild(
        ctx, g, tokens, U_a, Vh_a, S, U_f, Vh_f, active_index, frozen_index, need_x, need_u, need_vh, need_s, W=None
    ):
        """Through the dense W (the forward's, if it kept it, else rebuilt) and ``G = gᵀ x`` (the class
        docstring's *rebuild*)."""
        dtype = g.dtype
        grad_x = grad_u = grad_vh = grad_s = None
        if need_x:  # W again (unless kept), for as long as this one product needs it
            if W is None:
                W = dense_weight(U_a, Vh_a, S, U_f, Vh_f, active_index, frozen_index)
            grad_x = g @ W.to(dtype)
            del W
        if need_u or need_vh or need_s:
            G = g.T @ tokens.to(dtype)  # ∂L/∂W, m × n, once
            sigma = None if ctx.enhanced else S[active_index].to(dtype)
            if need_u or need_s:
                GV = G @ Vh_a.T.to(dtype)  # ∂L/∂W V_active, m × r
            if need_u:
                grad_u = (GV if ctx.enhanced else GV * sigma).to(U_a.dtype)
            if need_vh:
                UG = U_a.T.to(dtype) @ G  # U_activeᵀ ∂L/∂W, r × n
                grad_vh = (UG if ctx.enhanced else UG * sigma[:, None]).to(Vh_a.dtype)
            if need_s:  # u_iᵀ G v_i, summed in Σ's (float32) precision
                grad_s = torch.empty_like(S)
                grad_s[active_index] = (U_a.to(S.dtype) * GV.to(S.dtype)).sum(0)
                GV_frozen = G @ Vh_f.T.to(dtype)
                grad_s[frozen_index] = (U_f.to(S.dtype) * GV_frozen.to(S.dtype)).sum(0)
        return grad_x, grad_u, grad_vh, grad_s


class SSTLayer(AdaptedLinear):
    """``y = x (U diag(Σ) Vh)ᵀ + b`` with r active singular vectors, Σ and b trainable."""

    method = "sst"
    state_buffers = ("rng_state", "steps_taken", "periods_done", "draws_done", "resvds_done")

    def __init__(
        self,
        layer_name: str,
        linear: nn.Linear,
        rank: int,
        sampling: str = "multinomial",
        uniform_mix: float = 0.5,
        periods_per_round: int | None = None,
        seed: int = 0,
        gradient: str = "enhanced",
        keep_weight: str = "auto",
    ):
        super().__init__(linear.in_features, linear.out_features)
        W = linear.weight.detach()
        check_finite_weight(layer_name, W)
        self.layer_name, self.rank, self.sampling, self.uniform_mix = layer_name, rank, sampling, uniform_mix
        self.gradient = gradient  # "enhanced" | "default": what SpectralLinear's backward returns
        self.keep_weight = keep_weight  # "auto" | "always" | "never": see keeps_weight
        U, S, Vh = linalg.svd(W, name=f"layer {layer_name!r}")  # all k triplets, float32
        self.k = k = S.numel()
        self.periods_per_round = periods_per_round or math.ceil(k / rank)
        # The method's state, as persistent buffers so that model.state_dict() carries it (see
        # base.drawing): the sampling stream, the optimizer steps taken through this layer (the
        # period clock: warm-up and resampling read it), periods completed, index sets drawn
        # ("sequential" reads it) and re-SVDs done.
        self.register_buffer("rng_state", generator_state(layer_generator(seed, layer_name)))
        self.register_buffer("steps_taken", counter(0, W.device))
        self.register_buffer("periods_done", counter(0, W.device))
        self.register_buffer("draws_done", counter(0, W.device))
        self.register_buffer("resvds_done", counter(0, W.device))
        # A log for plots (widgets), not state: after a checkpoint is loaded it restarts with one
        # entry describing the loaded state.
        self.history: list[dict[str, Any]] = []
        self.register_load_state_dict_post_hook(_restart_history)

        active = self._draw(S)
        inactive = self._complement(active)
        dtype = W.dtype
        self.U_active = nn.Parameter(U[:, active].to(dtype).contiguous())  # m × r
        self.Vh_active = nn.Parameter(Vh[active].to(dtype).contiguous())  # r × n
        # Σ at least in float32 whatever the weight's dtype: it accumulates every step's small update,
        # which a bf16 Σ (8 significant bits) would round away. Forward casts it to the factors' dtype.
        self.S = nn.Parameter(S.to(torch.promote_types(dtype, torch.float32)))  # k: Σ, indexed by singular index
        self.U_frozen = frozen(U[:, inactive].to(dtype).contiguous())  # m × (k − r)
        self.Vh_frozen = frozen(Vh[inactive].to(dtype).contiguous())  # (k − r) × n
        self.register_buffer("active_index", active.to(W.device))  # slot → singular index
        self.register_buffer("frozen_index", inactive.to(W.device))
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        )
        self._record(step=0, resvd=False)

    @property
    def period(self) -> int:
        """Periods completed since apply."""
        return int(self.periods_done)

    @property
    def draws(self) -> int:
        """Index sets drawn so far."""
        return int(self.draws_done)

    @property
    def resvds(self) -> int:
        """Re-SVDs done."""
        return int(self.resvds_done)

    # -- the function ------------------------------------------------------------------------------

    def effective_weight(self) -> torch.Tensor:
        """``U diag(Σ) Vh`` as one dense out × in matrix in the factors' dtype (differentiable, through
        plain autograd, in the active block and Σ; the forward pass uses the same arithmetic)."""
        return dense_weight(
            self.U_active, self.Vh_active, self.S, self.U_frozen, self.Vh_frozen, self.active_index, self.frozen_index
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SpectralLinear.apply(
            x,
            self.U_active,
            self.Vh_active,
            self.S,
            self.U_frozen,
            self.Vh_frozen,
            self.bias,
            self.active_index,
            self.frozen_index,
            self.gradient == "enhanced",
            self.keep_weight,
        )

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, Σ, Vh)`` with the vectors in singular-index order (detached copies, m × k, k, k × n;
        U and Vh in the factors' dtype, Σ in its own float32)."""
        dtype, device = self.U_active.dtype, self.U_active.device
        U = torch.empty(self.out_features, self.k, dtype=dtype, device=device)
        Vh = torch.empty(self.k, self.in_features, dtype=dtype, device=device)
        U[:, self.active_index], U[:, self.frozen_index] = self.U_active.detach(), self.U_frozen.detach()
        Vh[self.active_index], Vh[self.frozen_index] = self.Vh_active.detach(), self.Vh_frozen.detach()
        return U, self.S.detach().clone(), Vh

    # -- what the optimizer hooks call -------------------------------------------------------------

    @torch.no_grad()
    def project(self) -> None:
        """After a step: Σ ≥ 0, and the active vectors back to unit length.

        Under FSDP2 (each factor split by rows, see :mod:`spectrallab.shards`) every rank projects
        its own rows, and nothing is gathered: Σ's entries and Vh's rows are whole on one rank each,
        and a column of U has the length √(Σ over the ranks of its rows' squares), r numbers summed
        across the processes. Another split gathers the three (``whole_parameters``).
        """
        trained = (self.U_active, self.Vh_active, self.S)
        if any(is_sharded(t) and not split_by_rows(t) for t in trained):
            with whole_parameters(self, _TRAINED):
                self.project()
            return
        U, Vh, S = (local(t) for t in trained)
        S.clamp_(min=0)
        tiny = torch.finfo(U.dtype).tiny
        if is_sharded(self.U_active):
            u_norms = sum_over_shards(U.square().sum(dim=0, keepdim=True), like=self.U_active).sqrt()
        else:
            u_norms = U.norm(dim=0, keepdim=True)
        U.div_(u_norms.clamp_min(tiny))
        Vh.div_(Vh.norm(dim=1, keepdim=True).clamp_min(tiny))

    @torch.no_grad()
    def next_period(self, step: int) -> tuple[bool, torch.Tensor]:
        """End the current period: re-SVD if a round is complete, then draw and swap in a new set.

        Returns ``(resvd, slots)``: whether a re-SVD happened, and the active slots that now hold a
        different vector than before (all of them after a re-SVD) — their optimizer state is stale.
        """
        self.periods_done.add_(1)
        if self.period % self.periods_per_round == 0:
            self.resvd(step)
            return True, torch.arange(self.rank)
        new_active = self._draw(self.S)
        slots = self.swap_in(new_active)
        self._record(step, resvd=False)
        return False, slots

    @torch.no_grad()
    def swap_in(self, new_active: torch.Tensor) -> torch.Tensor:
        """Make ``new_active`` the active set by swapping vectors between the blocks (in place).

        A vector that stays active keeps its slot; each leaving vector trades places with an
        entering one. Returns the slots that received a new vector.
        """
        device = self.active_index.device
        new_active = new_active.to(device)
        leaving = torch.nonzero(~torch.isin(self.active_index, new_active)).flatten()  # active slots
        entering = new_active[~torch.isin(new_active, self.active_index)]  # singular indices
        where = torch.nonzero(self.frozen_index[:, None] == entering[None, :])  # (frozen slot, entry)
        frozen_slots = where[where[:, 1].argsort(), 0]
        if leaving.numel():
            u, vh = self.U_active[:, leaving].clone(), self.Vh_active[leaving].clone()
            self.U_active[:, leaving] = self.U_frozen[:, frozen_slots]
            self.Vh_active[leaving] = self.Vh_frozen[frozen_slots]
            self.U_frozen[:, frozen_slots], self.Vh_frozen[frozen_slots] = u, vh
            old = self.active_index[leaving].clone()
            self.active_index[leaving] = self.frozen_index[frozen_slots]
            self.frozen_index[frozen_slots] = old
        return leaving.cpu()

    @torch.no_grad()
    def resvd(self, step: int | None = None) -> None:
        """``U, Σ, Vh ← SVD(U diag(Σ) Vh)``, then a fresh draw laid out in the blocks (same function)."""
        wide = self.S.dtype  # the product in Σ's precision: a bf16 W would round Σ to 8 bits here
        W = dense_weight(
            self.U_active.to(wide),
            self.Vh_active.to(wide),
            self.S,
            self.U_frozen.to(wide),
            self.Vh_frozen.to(wide),
            self.active_index,
            self.frozen_index,
        )
        U, S, Vh = linalg.svd(W, name=f"layer {self.layer_name!r}")
        active = self._draw(S)
        inactive = self._complement(active)
        dtype = self.U_active.dtype
        self.S.copy_(S)
        self.U_active.copy_(U[:, active].to(dtype))
        self.Vh_active.copy_(Vh[active].to(dtype))
        self.U_frozen.copy_(U[:, inactive].to(dtype))
        self.Vh_frozen.copy_(Vh[inactive].to(dtype))
        self.active_index.copy_(active)
        self.frozen_index.copy_(inactive)
        self.resvds_done.add_(1)
        self._record(step, resvd=True)

    # -- helpers -----------------------------------------------------------------------------------

    def _draw(self, S: torch.Tensor) -> torch.Tensor:
        with drawing(self.rng_state) as generator:
            chosen = draw_indices(
                S, self.rank, self.sampling, uniform_mix=self.uniform_mix, generator=generator, draw=self.draws
            )
        self.draws_done.add_(1)
        return chosen

    def _complement(self, active: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(self.k, dtype=torch.bool)
        mask[active.cpu()] = False
        return torch.arange(self.k)[mask]

    @torch.no_grad()
    def check_finite(self, step: int) -> None:
        """Before a step that ends a period: the gradients and the factors must be finite.

        The period's end swaps vectors, may re-SVD and draws from Σ; a NaN there would fail inside
        LAPACK (or ``multinomial``) *after* the optimizer moved every parameter. Raised before the
        step instead, so nothing has changed when the error arrives.
        """
        for name in ("U_active", "Vh_active", "S"):
            param = getattr(self, name)
            for what, tensor in (("gradient", param.grad), ("value", param)):
                if tensor is None:
                    continue
                tensor = whole(tensor)  # a shard (FSDP2) is checked whole, so every rank decides alike
                if not linalg.all_finite(tensor):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise ValueError(
                        f"layer {self.layer_name!r}: the {what} of {name} has {bad} non-finite "
                        f"value(s) (NaN or inf) at step {step}, which ends a period (resampling "
                        "and re-SVD need finite values); nothing was updated"
                    )

    def paper_counts(self) -> LayerCounts:
        """Sparse Spectral Training (Zhao et al., arXiv:2405.15481): ``W = U diag(Σ) Vh`` with all
        ``k`` singular values and ``r`` sampled singular vectors trained at a time: ``r(m+n) + k``
        trainable, Adam ``2(r(m+n) + k)`` (the memory-efficient implementation of the paper's §4.5).

        The other ``k − r`` columns of ``U`` and rows of ``Vh`` are stored frozen, so the weights held are
        all of ``U``, ``Σ`` and ``Vh``: ``k(m+n) + k`` — for a square layer about **twice** a dense
        ``W``. SST saves trainable parameters, gradients and optimizer state, not weight storage. This
        layer also keeps which singular index each slot holds (``active_index``, ``frozen_index``: ``k``
        integers, extra; not in the paper).
        """
        m, n, r, k = self.out_features, self.in_features, self.rank, self.k
        return LayerCounts.adam(k * (m + n) + k, r * (m + n) + k, k)

    def _record(self, step: int | None, resvd: bool) -> None:
        self.history.append(
            {
                "period": self.period,
                "step": step,
                "active": sorted(self.active_index.tolist()),
                "sigma": whole(self.S.detach()).float().cpu().tolist(),  # gathered if sharded (every rank logs)
                "resvd": resvd,
            }
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, k={self.k}, rank={self.rank}, sampling={self.sampling!r}, "
            f"periods_per_round={self.periods_per_round}, gradient={self.gradient!r}, keep_weight={self.keep_weight!r}"
        )


def _restart_history(layer: SSTLayer, incompatible_keys) -> None:
    """After ``load_state_dict``: the log starts again from the loaded state (steps are the loaded clock)."""
    layer.history = []
    layer._record(step=int(layer.steps_taken), resvd=False)
    layer.history[-1]["resumed"] = True


def reset_optimizer_state(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, slots: torch.Tensor | None = None, dim: int = 0
) -> None:
    """Zero ``param``'s moment-like optimizer state: entirely, or only at ``slots`` along ``dim``.

    Every tensor in the state shaped like the parameter is a per-entry moment (Adam's ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's ``momentum_buffer``); the step count is kept. Under FSDP2
    a moment is a shard (a DTensor) and ``slots`` are global: it is zeroed whole (``modify_whole_``).
    """
    state = optimizer.state.get(param)
    if not state:
        return
    for key, value in state.items():
        if key in _NOT_MOMENTS or not torch.is_tensor(value) or value.shape != param.shape:
            continue
        if slots is None:
            value.zero_()
        elif slots.numel():
            modify_whole_(value, lambda moment: moment.index_fill_(dim, slots.to(moment.device), 0))


@register("sst")
class SST(Method):
    """Sparse Spectral Training: train all singular values and r sampled singular vectors at a time.

    Options (paper symbols in brackets):

    * ``rank`` (8) — r, vectors trained per period.
    * ``resample_every`` (200) — T3, steps per period (the paper's "iteration").
    * ``warmup`` (20) — LR warm-up steps at the start of every period after the first (0: none;
      ≤ ``resample_every``); the first period's warm-up is the training loop's schedule.
    * ``periods_per_round`` (None → ⌈k/r⌉ per layer) — T2, periods between re-SVDs.
    * ``sampling`` ("multinomial" | "uniform" | "sequential" | "top").
    * ``uniform_mix`` (0.5) — μ, the uniform share of the multinomial probabilities.
    * ``gradient`` ("enhanced": ∂L/∂W·V_{·i} | "default": the plain gradient, Σ_i times that) — what
      the layer's backward writes into ``.grad``.
    * ``seed`` (0) — seeds every layer's sampling generator (with the layer's name).
    * ``keep_weight`` ("auto" | "always" | "never") — whether a forward that built the dense W keeps
      it for backward (memory for speed; the gradients are the same to the bit): "auto" from
      ``8 · out_features`` tokens per call on (``spectrallab.methods.sst.keeps_weight``).

    Trainable per layer: ``r(m + n) + k`` (+ bias). Everything else is trainable too
    (a pre-training method). See the module docstring for the algorithm and the choices made.
    """

    options = {
        "rank": rank_option(help="r, singular vectors trained per period"),
        "resample_every": Option(200, "T3, steps per period", kind="int", low=1),
        # The upper bound is another option's: check_options enforces the whole range.
        "warmup": Option(
            20,
            "LR warm-up steps at the start of every period after the first (0: none)",
            kind="int",
            low=0,
            high="resample_every",
        ),
        "periods_per_round": Option(
            None, "T2, periods between two re-SVDs", kind="int", low=1, none="⌈k/r⌉ per layer, one sweep"
        ),
        "sampling": Option(
            "multinomial", "how the r active indices are drawn each period", kind="choice", choices=SAMPLINGS
        ),
        "uniform_mix": Option(
            0.5, "μ, the uniform share of the multinomial probabilities", kind="float", low=0, high=1
        ),
        "gradient": Option(
            "enhanced",
            "what backward writes: ∂L/∂W·V_{·i} (enhanced) or Σ_i times it (default)",
            kind="choice",
            choices=GRADIENTS,
        ),
        "seed": Option(0, "seeds every layer's sampling generator (with the layer's name)", kind="seed"),
        "keep_weight": Option(
            "auto",
            "keep the dense W from forward to backward: auto (from 8·out_features tokens), always, never",
            kind="choice",
            choices=KEEP_WEIGHTS,
        ),
    }
    freezes_others = False
    init_reads_weight = "it factorizes the weight (an SVD) at apply"
    needs_optimizer_hooks = (
        "SST's renormalization after each step (Σ ≥ 0, unit singular vectors), its resampling "
        "of the trained singular vectors every resample_every steps, its re-SVDs and the "
        "LR warm-up after each period"
    )

    @classmethod
    def period_options(cls, period: int) -> dict:
        """Every ``period`` steps (used by the Playground's "period" knob)."""
        return {"resample_every": period, "warmup": min(period, max(1, period // 10))}

    def fsdp_refusal(self) -> None:
        """None: under FSDP2 each step's renormalization works on each rank's rows (r column lengths
        exchanged); at a period's end the hooks gather what the swaps and the re-SVD read whole
        (``whole_parameters``), compute the same on every rank and keep each rank's shard."""
        return None

    def check_options(self, where: str) -> None:
        """A period's warm-up fits in the period: ``0 ≤ warmup ≤ resample_every``."""
        T, W = self.config["resample_every"], self.config["warmup"]
        if not 0 <= W <= T:
            raise ValueError(
                f"{where}: warmup={W} is outside the allowed range [0, {T}] (it must not exceed resample_every={T})"
            )

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        check_rank(layer_name, linear, self.config["rank"])  # the options themselves: validate_options
        check_finite_weight(layer_name, linear.weight)  # the SVD at apply needs finite values

    def adapt(self, layer_name: str, linear: nn.Linear) -> SSTLayer:
        c = self.config
        return SSTLayer(
            layer_name,
            linear,
            c["rank"],
            c["sampling"],
            float(c["uniform_mix"]),
            c["periods_per_round"],
            c["seed"],
            c["gradient"],
            c["keep_weight"],
        )

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, layers: dict[str, SSTLayer]) -> None:
        """Hooks on ``optimizer``; the clock they read is each layer's ``steps_taken`` buffer.

        So the schedule lives with the model: a checkpoint (``model.state_dict()``) carries it, and an
        optimizer built again mid-run (a re-run notebook cell) continues it — periods end at the same
        steps. (The new optimizer starts with empty moments, as any new torch optimizer does.)
        """
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        mine = [layer for layer in layers.values() if id(layer.U_active) in in_optimizer or id(layer.S) in in_optimizer]
        if not mine:
            return
        period, warmup = self.config["resample_every"], self.config["warmup"]

        def clocks() -> list[int]:
            """Steps taken by each layer (one device read for all of them)."""
            return torch.stack([layer.steps_taken for layer in mine]).tolist()

        if warmup:
            # The first layer's clock: every layer of one method steps together. The first period is
            # left to the loop's schedule (period_warmup is 1 there): warming it up here too would
            # multiply the two ramps.
            add_lr_multiplier(optimizer, lambda: period_warmup(int(mine[0].steps_taken), period, warmup))

        def check(opt):
            for layer, taken in zip(mine, clocks()):
                if (taken + 1) % period == 0:
                    layer.check_finite(taken + 1)

        def after_step(opt, args, kwargs):
            for layer, taken in zip(mine, clocks()):
                layer.steps_taken.add_(1)
                step = taken + 1
                ends = step % period == 0
                if not ends:
                    layer.project()  # under FSDP2, on each rank's rows (no gather)
                    continue
                # The swaps and the re-SVD index by singular index and multiply the factors out: whole
                # matrices (a no-op unless FSDP2 sharded them; then every rank computes the same on
                # the gathered values and keeps its shard).
                with whole_parameters(layer, _SPECTRAL):
                    layer.project()
                    resvd, slots = layer.next_period(step)
                if resvd:
                    for param in (layer.U_active, layer.Vh_active, layer.S):
                        reset_optimizer_state(opt, param)
                else:
                    reset_optimizer_state(opt, layer.U_active, slots, dim=1)
                    reset_optimizer_state(opt, layer.Vh_active, slots, dim=0)

        # (No pre-step hook: the enhanced gradient is already what backward wrote into .grad.)
        add_step_check(optimizer, check)
        optimizer.register_step_post_hook(after_step)
