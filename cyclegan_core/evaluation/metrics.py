"""Image-translation metrics: paired PSNR / SSIM / L1, cycle error, and unpaired FID / KID.

Conventions (images are float NCHW RGB tensors in [-1, 1], as everywhere in the library):

- ``psnr``, ``ssim``: computed on ``[0, 1]`` images (``(x + 1) / 2``, clamped), data range 1, one value
  per image. SSIM is Wang et al. 2004: Gaussian window 11x11, sigma 1.5, C1 = (0.01 L)^2,
  C2 = (0.03 L)^2, ``valid`` filtering (no padding, as the reference MATLAB code and scikit-image's
  ``gaussian_weights=True`` mode), averaged over pixels then channels.
- ``l1``: mean absolute difference in the [-1, 1] units of the training cycle loss, one value per image.
- FID (Heusel et al. 2017): ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` over Inception-v3 pool3
  features (2048-d). The matrix square root is eigen-based in float64 (``frechet_distance``); from
  features, ``fid_from_features`` uses the exact sample-space identity
  ``Tr sqrt(S1 S2) = ||A1 A2^T||_*`` (nuclear norm; A = centred features / sqrt(n - 1)) when that is
  smaller than the 2048 x 2048 route.
- KID (Binkowski et al. 2018, as torch-fidelity): unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, over ``subsets`` random subsets of size ``min(subset_size, n1, n2)``
  drawn without replacement from each set; the mean and standard deviation over subsets are reported.

The Inception-v3 feature extractor FID and KID are computed over lives in ``cyclegan_core.evaluation.inception``
(it needs torchvision, which nothing else here does).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PSNR_MAX_DB = 100.0
"""PSNR of identical images (MSE 0) is reported as this instead of infinity (keeps JSON and averages finite)."""


# --- paired metrics ------------------------------------------------------------------------------


def to_unit_range(images: Tensor) -> Tensor:
    """Map [-1, 1] images to [0, 1] (clamped)."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _check_pair(x: Tensor, y: Tensor, name: str) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"{name}: expected two NCHW tensors of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image (N,), on [0, 1] images; capped at ``PSNR_MAX_DB``."""
    _check_pair(x, y, "psnr")
    mse = (to_unit_range(x) - to_unit_range(y)).pow(2).flatten(1).mean(dim=1)
    min_mse = 10.0 ** (-PSNR_MAX_DB / 10.0)
    return -10.0 * torch.log10(mse.clamp_min(min_mse))


def l1(x: Tensor, y: Tensor) -> Tensor:
    """Mean absolute difference per image (N,), in [-1, 1] units (the training cycle loss's scale)."""
    _check_pair(x, y, "l1")
    return (x.float() - y.float()).abs().flatten(1).mean(dim=1)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle one."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    window = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return (window / window.sum()).float()


def ssim(x: Tensor, y: Tensor, *, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity per image (N,) on [0, 1] images: mean over valid pixels, then channels."""
    _check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size} pixels, "
                         f"got {tuple(x.shape[-2:])}")
    x, y = to_unit_range(x), to_unit_range(y)
    channels = x.shape[1]
    g = gaussian_window(window_size, sigma).to(x.device)
    # separable Gaussian: filter rows then columns, each channel on its own (groups=channels)
    kernel_h = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    kernel_v = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kernel_h, groups=channels), kernel_v, groups=channels)

    c1, c2 = 0.01**2, 0.03**2  # (K L)^2 with L = 1, K1 = 0.01, K2 = 0.03
    mu_x, mu_y = blur(x), blur(y)
    sigma_xx = blur(x * x) - mu_x**2
    sigma_yy = blur(y * y) - mu_y**2
    sigma_xy = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (sigma_xx + sigma_yy + c2)
    )
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)


# --- FID -----------------------------------------------------------------------------------------


def _as_float64(values: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(values).detach().to("cpu", torch.float64)


def _sqrt_psd(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative round-off -> 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigenvectors * eigenvalues.clamp_min(0.0).sqrt()) @ eigenvectors.T


def frechet_distance(
    mu1: Tensor | np.ndarray, sigma1: Tensor | np.ndarray, mu2: Tensor | np.ndarray, sigma2: Tensor | np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``Tr sqrt(S1 S2)`` is computed as ``Tr sqrt(sqrt(S1) S2 sqrt(S1))``: the inner matrix is symmetric
    PSD, so both roots come from ``eigh`` and stay real and finite even for singular covariances
    (the case where ``scipy.linalg.sqrtm(S1 @ S2)`` needs its eps-offset fallback).
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    sigma1, sigma2 = _as_float64(sigma1), _as_float64(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"frechet_distance: incompatible shapes mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"sigma {tuple(sigma1.shape)}/{tuple(sigma2.shape)}")
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2.0).clamp_min(0.0).sqrt().sum()
    diff = mu1 - mu2
    value = diff.dot(diff) + torch.trace(sigma1) + torch.trace(sigma2) - 2.0 * tr_covmean
    return float(value)


def feature_statistics(features: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance (float64) of an (N, D) feature matrix, N >= 2."""
    feats = _as_float64(features)
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ValueError(f"need an (N, D) feature matrix with N >= 2, got shape {tuple(feats.shape)}")
    return feats.mean(dim=0), torch.cov(feats.T, correction=1).reshape(feats.shape[1], feats.shape[1])


def fid_from_features(features1: Tensor | np.ndarray, features2: Tensor | np.ndarray) -> float:
    """FID between two (N, D) feature sets (N >= 2 each), in float64.

    With A_i = (F_i - mean) / sqrt(n_i - 1), S_i = A_i^T A_i and the non-zero eigenvalues of S1 S2 are
    those of (A1 A2^T)(A1 A2^T)^T, so ``Tr sqrt(S1 S2)`` is the nuclear norm of the n1 x n2 matrix
    A1 A2^T: exact, and far cheaper than two D x D eigendecompositions when n1 n2 <= D^2.
    """
    f1, f2 = _as_float64(features1), _as_float64(features2)
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1] or min(f1.shape[0], f2.shape[0]) < 2:
        raise ValueError(f"fid_from_features: need (N1, D) and (N2, D) features with N >= 2, got "
                         f"{tuple(f1.shape)} and {tuple(f2.shape)}")
    dim = f1.shape[1]
    if f1.shape[0] * f2.shape[0] > dim * dim:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    mu1, mu2 = f1.mean(dim=0), f2.mean(dim=0)
    a1 = (f1 - mu1) / math.sqrt(f1.shape[0] - 1)
    a2 = (f2 - mu2) / math.sqrt(f2.shape[0] - 1)
    tr_covmean = torch.linalg.matrix_norm(a1 @ a2.T, ord="nuc")
    diff = mu1 - mu2
    value = diff.dot(diff) + a1.pow(2).sum() + a2.pow(2).sum() - 2.0 * tr_covmean
    return float(value)


# --- KID -----------------------------------------------------------------------------------------


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """Cubic polynomial kernel matrix ``(x.y / d + 1)^3`` (KID's kernel)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD^2 estimate (equal sample sizes m) with the cubic polynomial kernel.

    ``sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2``
    """
    m = x.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    features1: Tensor | np.ndarray,
    features2: Tensor | np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over subsets) between two (N, D) feature sets, in float64.

    Each subset draws ``min(subset_size, n1, n2)`` rows without replacement from each set
    (torch-fidelity's protocol); ``seed`` makes the draw reproducible.
    """
    f1, f2 = _as_float64(features1), _as_float64(features2)
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kid_from_features: need (N1, D) and (N2, D) features, got {tuple(f1.shape)} and "
                         f"{tuple(f2.shape)}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"kid_from_features: subsets need at least 2 samples per set, got {m}")
    if subsets < 1:
        raise ValueError(f"kid_from_features: subsets must be >= 1, got {subsets}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        idx1 = torch.randperm(f1.shape[0], generator=generator)[:m]
        idx2 = torch.randperm(f2.shape[0], generator=generator)[:m]
        values.append(mmd2_unbiased(f1[idx1], f2[idx2]))
    scores = torch.tensor(values, dtype=torch.float64)
    std = float(scores.std(correction=0)) if subsets > 1 else 0.0
    return float(scores.mean()), std
