"""Validation metrics. Pixels are compared as the served model returns them (uint8)."""

from __future__ import annotations

import math

import numpy as np


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of uint8 (or [0, 1] float) images, on the [0, 1] scale."""
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    b = b.astype(np.float64) / 255.0 if b.dtype == np.uint8 else b.astype(np.float64)
    return float(np.mean((a - b) ** 2))


def psnr(mse_value: float) -> float:
    """Peak signal-to-noise ratio in dB for pixels in [0, 1]."""
    return math.inf if mse_value == 0 else 10.0 * math.log10(1.0 / mse_value)


def hist_chi2(real: np.ndarray, fake: np.ndarray, bins: int = 64) -> float:
    """Chi-squared distance between the pixel-value histograms of two uint8 batches
    (seed 003's cheap check that generated samples have the data's colour distribution):
    0 for identical histograms, 1 for disjoint ones."""
    h_real = np.histogram(real, bins=bins, range=(0, 256))[0].astype(np.float64)
    h_fake = np.histogram(fake, bins=bins, range=(0, 256))[0].astype(np.float64)
    p, q = h_real / h_real.sum(), h_fake / h_fake.sum()
    denom = p + q
    nz = denom > 0
    return float(0.5 * np.sum((p[nz] - q[nz]) ** 2 / denom[nz]))
