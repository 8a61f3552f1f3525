"""cyclegan_core.evaluation.metrics against independent values: closed forms, scipy, explicit loops."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch

from cyclegan_core.evaluation.metrics import (
    PSNR_MAX_DB,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    l1,
    psnr,
    ssim,
)


def test_psnr_of_a_known_error_and_of_identical_images() -> None:
    x = torch.full((2, 3, 8, 8), -1.0)
    y = x + 0.2  # 0.1 in [0, 1] units: MSE 0.01 -> 20 dB
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 20.0]), atol=1e-4)
    assert torch.allclose(psnr(x, x), torch.tensor([PSNR_MAX_DB] * 2))


def test_l1_is_the_mean_absolute_difference_per_image() -> None:
    x = torch.zeros(2, 3, 4, 4)
    y = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -1.0)])
    assert torch.allclose(l1(x, y), torch.tensor([0.5, 1.0]))


def test_paired_metrics_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 15))


def numpy_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM of two HxWxC [0, 1] images: scipy Gaussian (sigma 1.5, 11 taps), valid region."""
    c1, c2, pad = 0.01**2, 0.03**2, 5
    per_channel = []
    for c in range(x.shape[2]):
        a, b = x[:, :, c].astype(np.float64), y[:, :, c].astype(np.float64)

        def blur(t: np.ndarray) -> np.ndarray:
            return scipy.ndimage.gaussian_filter(t, sigma=1.5, truncate=3.5, mode="reflect")[
                pad:-pad, pad:-pad
            ]

        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        per_channel.append(s.mean())
    return float(np.mean(per_channel))


def test_ssim_of_identical_images_is_one() -> None:
    x = torch.rand(2, 3, 20, 24) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


def test_ssim_matches_an_independent_numpy_implementation() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 24, 30, generator=generator) * 2 - 1
    y = (x + 0.4 * torch.randn(2, 3, 24, 30, generator=generator)).clamp(-1, 1)
    ours = ssim(x, y)
    for i in range(2):
        a = ((x[i] + 1) / 2).permute(1, 2, 0).numpy()
        b = ((y[i] + 1) / 2).permute(1, 2, 0).numpy()
        assert ours[i].item() == pytest.approx(numpy_ssim(a, b), abs=1e-5)
    assert 0.0 < ours.min() < ours.max() < 1.0


def test_ssim_rejects_images_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


# --- FID -----------------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_of_sampled_gaussians_approaches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 0.5, 1.0, -1.0]), np.array([1.0, 0.0, 1.0, 1.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.25, 2.0, 2.0, 4.0])
    x = mu1 + rng.normal(size=(20000, 4)) * np.sqrt(s1)
    y = mu2 + rng.normal(size=(20000, 4)) * np.sqrt(s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert fid_from_features(x, y) == pytest.approx(expected, rel=0.03)


def test_fid_of_a_set_with_itself_is_zero() -> None:
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(0))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fid_sample_space_route_equals_the_covariance_route() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 40)), 1.5 * rng.normal(size=(7, 40)) + 0.3  # 5 * 7 < 40^2: sample space
    expected = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    # rank-deficient covariances: the D x D route takes square roots of round-off-sized eigenvalues,
    # so it agrees to ~sqrt(machine eps) relative, not to machine precision
    assert fid_from_features(x, y) == pytest.approx(expected, rel=1e-7)
    assert fid_from_features(x, y) > 1.0


def test_fid_needs_two_samples_per_set() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        fid_from_features(np.zeros((1, 8)), np.zeros((4, 8)))


# --- KID -----------------------------------------------------------------------------------------


def loop_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, by explicit loops."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_a_hand_computed_mmd_on_a_tiny_example() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(loc=0.7, size=(5, 3))
    # subset size >= n: every subset is the whole set (in some order), so all subsets agree
    mean, std = kid_from_features(x, y, subsets=4, subset_size=10)
    assert mean == pytest.approx(loop_mmd2_unbiased(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_of_identical_distributions_is_near_zero_and_grows_with_a_shift() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 16, generator=generator), torch.randn(1000, 16, generator=generator)
    same, _ = kid_from_features(x, y, subsets=2, subset_size=1000)
    shifted, _ = kid_from_features(x, y + 0.5, subsets=2, subset_size=1000)
    assert abs(same) < 0.01
    assert shifted > 0.5


def test_kid_subsets_are_reproducible_and_vary() -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 8, generator=generator), torch.randn(30, 8, generator=generator) + 0.3
    first = kid_from_features(x, y, subsets=10, subset_size=10, seed=5)
    assert first == kid_from_features(x, y, subsets=10, subset_size=10, seed=5)
    assert first[1] > 0.0


# --- Inception-v3 feature extractor --------------------------------------------------------------
