"""SVD helpers and spectra metrics against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from spectrallab import linalg


def matrix_with_spectrum(sigma: torch.Tensor, m: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, len(sigma), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, len(sigma), generator=g, dtype=torch.float64))
    return ((U * sigma.double()) @ V.T).float()


def test_exact_svd_reconstructs_and_is_orthonormal():
    W = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    U, S, Vh = linalg.svd(W)
    torch.testing.assert_close((U * S) @ Vh, W, atol=1e-5, rtol=1e-5)
    assert linalg.orthogonality_error(U) < 1e-5 and linalg.orthogonality_error(Vh.T) < 1e-5
    assert torch.all(S[:-1] >= S[1:])


def test_truncation_meets_the_eckart_young_bound_and_random_low_rank_does_not():
    W = torch.randn(50, 40, generator=torch.Generator().manual_seed(1))
    S = linalg.spectrum(W)
    for r in (1, 5, 20):
        err = torch.linalg.matrix_norm(W - linalg.truncate(W, r))
        torch.testing.assert_close(err, linalg.eckart_young_error(S, r), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            torch.linalg.matrix_norm(W - linalg.truncate(W, r), ord=2),
            linalg.eckart_young_error(S, r, "spectral"),
            rtol=1e-4,
            atol=1e-5,
        )
        g = torch.Generator().manual_seed(r)
        Q, _ = torch.linalg.qr(torch.randn(50, r, generator=g))
        assert torch.linalg.matrix_norm(W - Q @ (Q.T @ W)) > 1.01 * linalg.eckart_young_error(S, r)


@pytest.mark.parametrize("gap, n_iter", [(0.5, 0), (0.5, 2), (0.9, 2)])
def test_randomized_svd_matches_exact_on_a_gapped_spectrum(gap, n_iter):
    r = 8
    sigma = torch.cat([torch.linspace(10, 5, r), 5 * gap * torch.logspace(0, -2, 40)])
    W = matrix_with_spectrum(sigma, 120, 80)
    U, S, Vh = linalg.svd(W, r, method="randomized", n_iter=n_iter, generator=torch.Generator().manual_seed(0))
    assert U.shape == (120, r) and S.shape == (r,) and Vh.shape == (r, 80)
    torch.testing.assert_close(S, sigma[:r].float(), rtol=0.05 if n_iter == 0 else 1e-3, atol=1e-3)
    optimal = linalg.eckart_young_error(linalg.spectrum(W), r)
    err = torch.linalg.matrix_norm(W - (U * S) @ Vh)
    assert err <= optimal * (1.25 if n_iter == 0 else 1.01)


@pytest.mark.parametrize("n_iter", [0, 3])
def test_randomized_svd_is_torch_svd_lowrank_under_the_same_seed(n_iter):
    """Same sketch, same half-step QRs, same final SVD as ``torch.svd_lowrank`` (PEFT's pissa_niter_K):
    on a flat spectrum, where a different sketch or an iteration more or less moves the result far
    more than rounding does."""
    W = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    U, S, Vh = linalg.svd(W, 6, method="randomized", n_iter=n_iter, oversample=0)
    torch.manual_seed(7)
    U2, S2, V2 = torch.svd_lowrank(W, q=6, niter=n_iter)
    torch.testing.assert_close(S, S2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(U @ U.T, U2 @ U2.T, rtol=0, atol=1e-4)  # the same subspaces
    torch.testing.assert_close(Vh.T @ Vh, V2 @ V2.T, rtol=0, atol=1e-4)


def test_check_finite_false_skips_only_the_finiteness_pass():
    W = torch.randn(30, 20, generator=torch.Generator().manual_seed(0))
    for method in ("exact", "randomized"):
        torch.manual_seed(0)
        checked = linalg.svd(W, 5, method=method)
        torch.manual_seed(0)
        trusted = linalg.svd(W, 5, method=method, check_finite=False)
        for a, b in zip(checked, trusted):
            assert torch.equal(a, b)
    # Not a float32/float64 matrix: still read (and upcast, and checked) through as_matrix.
    assert linalg.svd(W.bfloat16(), 5, check_finite=False).S.dtype == torch.float32
    with pytest.raises(ValueError, match="non-finite"):
        linalg.svd(torch.full((4, 4), float("nan")).bfloat16(), 2, check_finite=False)
    with pytest.raises(ValueError, match=r"rank=9 is outside the allowed range \[1, 4\]"):
        linalg.svd(torch.eye(4), 9, check_finite=False)


def test_power_iterations_help_most_when_the_gap_is_small():
    r = 10
    sigma = torch.cat([torch.ones(r), 0.95 * torch.ones(60)])  # σ_{r+1}/σ_r = 0.95: almost no gap
    W = matrix_with_spectrum(sigma, 200, 150, seed=3)
    excess = {}
    for q in (0, 3):
        U, S, Vh = linalg.svd(
            W, r, method="randomized", n_iter=q, oversample=5, generator=torch.Generator().manual_seed(0)
        )
        captured = torch.linalg.matrix_norm(U.T @ W) ** 2 / (sigma[:r] ** 2).sum()
        excess[q] = float(1 - captured)
    assert excess[3] < excess[0]


def test_energy_and_rank_for_energy():
    S = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert float(linalg.energy(S, 1)) == pytest.approx(9 / 14)
    torch.testing.assert_close(linalg.energy(S), torch.tensor([9 / 14, 13 / 14, 1.0, 1.0]))
    assert linalg.rank_for_energy(S, 0.9) == 2
    assert linalg.rank_for_energy(S, 1.0) == 3
    with pytest.raises(ValueError, match=r"fraction=1.5 is outside the allowed range \(0, 1\]"):
        linalg.rank_for_energy(S, 1.5)


def test_effective_rank_and_stable_rank_definitions():
    flat = torch.ones(7)
    assert float(linalg.effective_rank(flat)) == pytest.approx(7)
    assert float(linalg.stable_rank(flat)) == pytest.approx(7)
    spike = torch.tensor([1.0, 0, 0, 0])
    assert float(linalg.effective_rank(spike)) == pytest.approx(1)
    assert float(linalg.stable_rank(spike)) == pytest.approx(1)
    S = torch.tensor([4.0, 2.0, 1.0, 1.0])
    p = S / S.sum()
    assert float(linalg.effective_rank(S)) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    assert float(linalg.stable_rank(S)) == pytest.approx(22 / 16)


def test_principal_angles_and_subspace_overlap():
    e = torch.eye(6)
    assert linalg.subspace_overlap(e[:, :2], e[:, :2]) == pytest.approx(1.0)
    assert linalg.subspace_overlap(e[:, :2], e[:, 2:4]) == pytest.approx(0.0, abs=1e-12)
    rotated = torch.stack([e[:, 0], (e[:, 1] + e[:, 2]) / math.sqrt(2)], 1)
    angles = linalg.principal_angles(e[:, :2], rotated)
    torch.testing.assert_close(angles, torch.tensor([0.0, math.pi / 4]), atol=1e-5, rtol=0)
    assert linalg.subspace_overlap(e[:, :2], rotated) == pytest.approx(0.75)
    # containment: a 1-D subspace of a 2-D one overlaps fully
    assert linalg.subspace_overlap(e[:, :1], e[:, :2] * 3) == pytest.approx(1.0)


def test_orthogonality_error_detects_drift():
    Q, _ = torch.linalg.qr(torch.randn(20, 5, generator=torch.Generator().manual_seed(0)))
    assert linalg.orthogonality_error(Q) < 1e-5
    assert linalg.orthogonality_error(Q * 1.1) == pytest.approx(math.sqrt(5) * 0.21, rel=1e-4)


def test_spectral_gap():
    S = torch.tensor([4.0, 2.0, 1.0])
    assert linalg.spectral_gap(S, 1) == 0.5 and linalg.spectral_gap(S, 3) == 0.0


def test_bad_rank_and_shapes():
    W = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"rank=4 is outside the allowed range \[1, 3\]"):
        linalg.svd(W, 4)
    with pytest.raises(ValueError, match="expected a 2-D matrix"):
        linalg.spectrum(torch.randn(3))
    with pytest.raises(ValueError, match="svd method='qr'"):
        linalg.svd(W, 2, method="qr")


def test_half_precision_is_upcast():
    W = torch.randn(16, 8).half()
    U, S, Vh = linalg.svd(W, 4)
    assert S.dtype == torch.float32
    torch.testing.assert_close(S, torch.linalg.svdvals(W.float())[:4])


def test_all_finite_is_exact_even_when_the_sum_overflows():
    huge = torch.full((4, 4), 3e38)  # finite entries whose sum overflows to inf
    assert linalg.all_finite(huge)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(64, 64)
        t[3, 5] = bad
        assert not linalg.all_finite(t)
    mixed = torch.tensor([float("inf"), -float("inf")])  # sums to NaN; still caught
    assert not linalg.all_finite(mixed)


# -- intruder dimensions (Shuttleworth et al. 2024, arXiv:2410.21228) ------------------------------


def pretrained_like(m: int = 48, n: int = 40, seed: int = 0) -> torch.Tensor:
    """A weight with a clear spectrum: 8 large, well-separated values above a small decaying tail."""
    sigma = torch.cat([torch.linspace(10, 3, 8), 0.5 * torch.logspace(0, -1, min(m, n) - 8)])
    return matrix_with_spectrum(sigma, m, n, seed)


def test_intruders_of_an_unchanged_or_sign_flipped_weight_are_zero():
    W = pretrained_like()
    for W_ft in (W.clone(), -W):  # −W has the same singular vectors up to sign: |cos| = 1
        found = linalg.intruder_dimensions(W, W_ft, k=10, epsilon=0.5)
        assert found.count == 0 and found.indices.numel() == 0
        torch.testing.assert_close(found.max_similarity, torch.ones(10), atol=1e-4, rtol=0)
        assert found.similarity.shape == (10, 40) and found.singular_values.shape == (10,)


def test_a_large_spike_along_new_directions_is_exactly_one_intruder_at_the_top():
    W = pretrained_like()
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    # an equal mix of the 20 smallest left (and right) directions: |cos| with any single pretrained
    # vector is 1/√20 ≈ 0.22, so the spike is new although it lies inside W's column space
    u = U[:, -20:].sum(1) / math.sqrt(20)
    v = Vh[-20:].sum(0) / math.sqrt(20)
    W_ft = (W.double() + 30.0 * torch.outer(u, v)).float()
    found = linalg.intruder_dimensions(W, W_ft, k=10, epsilon=0.5)
    assert found.count == 1 and found.indices.tolist() == [0], found.max_similarity
    assert float(found.max_similarity[0]) < 0.3 and bool((found.max_similarity[1:] > 0.9).all())
    assert float(found.singular_values[0]) > 2 * float(S[0])  # the intruder is the new σ'_1
    # the same spike far below the top-k does not count: intruders are *high-ranking* vectors
    small = (W.double() + 0.2 * torch.outer(u, v)).float()
    assert linalg.intruder_dimensions(W, small, k=8, epsilon=0.5).count == 0


def test_a_spike_along_one_existing_minor_direction_is_not_an_intruder():
    """Matched against *all* pretrained vectors: promoting σ_last to the top is not a new direction
    (an implementation that compared only with the top k pretrained vectors would call it one)."""
    W = pretrained_like()
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    W_ft = (W.double() + 30.0 * torch.outer(U[:, -1], Vh[-1])).float()
    found = linalg.intruder_dimensions(W, W_ft, k=10, epsilon=0.5)
    assert found.count == 0
    assert float(found.max_similarity[0]) > 0.999
    assert float(found.similarity[0, :10].max()) < 1e-3  # unlike every *top* pretrained vector


def test_a_tall_weight_can_gain_a_direction_orthogonal_to_every_pretrained_one():
    W = pretrained_like(60, 20, seed=2)  # 20 left singular vectors span 20 of 60 dimensions
    U, _, Vh = torch.linalg.svd(W.double(), full_matrices=True)
    outside = U[:, 40]  # orthogonal to the column space of W
    # read through W's weakest input direction, so W itself barely tilts the new output direction
    W_ft = (W.double() + 40.0 * torch.outer(outside, Vh[-1])).float()
    found = linalg.intruder_dimensions(W, W_ft, k=5, epsilon=0.1)
    assert found.indices.tolist() == [0] and float(found.max_similarity[0]) < 1e-2


def test_left_and_right_singular_vectors_can_disagree():
    """A spike whose output direction is W's top u₁ but whose input direction is new intrudes on
    the right (Vh) side only; the default, as the authors' code, is the left side."""
    W = pretrained_like()
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    v = Vh[-20:].sum(0) / math.sqrt(20)
    W_ft = (W.double() + 30.0 * torch.outer(U[:, 0], v)).float()
    assert linalg.intruder_dimensions(W, W_ft, k=5).count == 0
    right = linalg.intruder_dimensions(W, W_ft, k=5, side="right")
    assert right.count == 1 and right.indices.tolist() == [0]


def test_intruder_count_is_monotone_in_epsilon_and_count_below_agrees():
    W = pretrained_like(64, 64, seed=4)
    g = torch.Generator().manual_seed(1)
    W_ft = W + 0.8 * torch.randn(64, 64, generator=g)  # a dense perturbation mixes the tail directions
    found = linalg.intruder_dimensions(W, W_ft, k=16, epsilon=0.5)
    epsilons = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    counts = [found.count_below(e) for e in epsilons]
    assert counts == sorted(counts) and counts[-1] > counts[0], counts
    for e, c in zip(epsilons, counts):
        again = linalg.intruder_dimensions(W, W_ft, k=16, epsilon=e)
        assert again.count == c and again.indices.tolist() == torch.nonzero(found.max_similarity < e).flatten().tolist()
    # the similarity matrix is |U'ᵀU| of the two SVDs, its row maxima are max_similarity
    U0 = torch.linalg.svd(W).U
    U1 = torch.linalg.svd(W_ft).U
    torch.testing.assert_close(found.similarity, (U1[:, :16].T @ U0).abs(), atol=1e-4, rtol=0)
    torch.testing.assert_close(found.max_similarity, found.similarity.max(1).values)


def test_intruders_read_layers_and_the_effective_weight_of_adapted_layers():
    import copy

    from torch import nn

    import spectrallab as sl

    torch.manual_seed(0)
    linear = nn.Linear(24, 32)
    adapted = sl.apply(copy.deepcopy(linear), "lora", rank=2)
    with torch.no_grad():
        adapted.lora_B.normal_(0, 3.0)
    from_layers = linalg.intruder_dimensions(linear, adapted, k=6)
    from_tensors = linalg.intruder_dimensions(linear.weight, adapted.effective_weight(), k=6)
    torch.testing.assert_close(from_layers.max_similarity, from_tensors.max_similarity)
    assert from_layers.indices.tolist() == from_tensors.indices.tolist()
    half = linalg.intruder_dimensions(linear.weight.half(), linear.weight.half(), k=6)
    assert half.count == 0 and half.max_similarity.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(k=0), ValueError, r"k=0 is outside the allowed range \[1, 16\]"),
        (dict(k=17), ValueError, r"k=17 is outside the allowed range \[1, 16\]"),
        (dict(k=2.0), TypeError, r"k must be an int in \[1, 16\]"),
        (dict(k=True), TypeError, "k must be an int"),
        (dict(epsilon=0), ValueError, r"epsilon=0 is outside the allowed range \(0, 1\]"),
        (dict(epsilon=1.5), ValueError, r"epsilon=1.5 is outside the allowed range \(0, 1\]"),
        (dict(epsilon=float("nan")), TypeError, r"epsilon must be a finite number in \(0, 1\]"),
        (dict(epsilon="0.5"), TypeError, "epsilon must be a finite number"),
        (dict(side="both"), ValueError, "side='both' is not one of 'left', 'right'"),
    ],
)
def test_intruder_bad_options(kwargs, error, message):
    W = torch.randn(16, 24)
    with pytest.raises(error, match=message):
        linalg.intruder_dimensions(W, W + 0.1, **kwargs)


def test_intruder_bad_matrices():
    W = torch.randn(16, 24)
    with pytest.raises(ValueError, match=r"same shape, got \(16, 24\) and \(24, 16\)"):
        linalg.intruder_dimensions(W, W.T)
    bad = W.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="W_ft: has 1 non-finite value"):
        linalg.intruder_dimensions(W, bad)
    with pytest.raises(ValueError, match="W_pre: expected a 2-D matrix"):
        linalg.intruder_dimensions(torch.randn(16), W)
    with pytest.raises(TypeError, match="W_pre: expected a 2-D tensor or a layer"):
        linalg.intruder_dimensions([[1.0]], W)
    found = linalg.intruder_dimensions(W, W)
    with pytest.raises(ValueError, match=r"epsilon=2 is outside the allowed range"):
        found.count_below(2)


def test_rank_for_energy_one_keeps_every_nonzero_value_in_float32():
    """A float32 cumulative sum reaches 1.0 before the last (small) value; full energy needs all k."""
    S = torch.linspace(10, 0.01, 128, dtype=torch.float32)
    assert linalg.rank_for_energy(S, 1.0) == 128
