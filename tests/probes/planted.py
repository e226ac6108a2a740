"""Planted test data: Gaussian activations plus a known linear direction per label."""

from __future__ import annotations

import numpy as np

Planted = tuple[np.ndarray, np.ndarray]


def planted(n: int, d: int = 32, k: int = 3, strength: float = 3.0, seed: int = 0) -> Planted:
    """Gaussian vectors plus `strength` × a fixed unit direction per class; labels "c0".."c{k-1}".

    Class c's mean lies `strength` along its own unit direction (orthonormal across classes, so
    two means are strength·√2 apart): strength 3 is well separated, strength 0 is pure noise.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    directions = np.linalg.qr(rng.normal(size=(d, k)))[0].T  # k orthonormal rows
    x = rng.normal(size=(n, d)) + strength * directions[y]
    return x.astype(np.float32), np.array([f"c{i}" for i in range(k)])[y]

