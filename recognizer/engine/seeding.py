"""Seeding: one call sets Python's, NumPy's and torch's random generators (training, doctor, LR range test)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy.random`` and torch (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
