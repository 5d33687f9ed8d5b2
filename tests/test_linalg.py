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
        torch.testing.assert_close(torch.linalg.matrix_norm(W - linalg.truncate(W, r), ord=2),
                                   linalg.eckart_young_error(S, r, "spectral"), rtol=1e-4, atol=1e-5)
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


def test_power_iterations_help_most_when_the_gap_is_small():
    r = 10
    sigma = torch.cat([torch.ones(r), 0.95 * torch.ones(60)])  # σ_{r+1}/σ_r = 0.95: almost no gap
    W = matrix_with_spectrum(sigma, 200, 150, seed=3)
    excess = {}
    for q in (0, 3):
        U, S, Vh = linalg.svd(W, r, method="randomized", n_iter=q, oversample=5,
                              generator=torch.Generator().manual_seed(0))
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
