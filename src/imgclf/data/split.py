"""Deterministic, stratified splits and the fingerprints that let a bundle find them again."""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["fingerprint", "stratified_split"]


def stratified_split(targets: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split indices class by class: ``fractions`` (for example ``{"val": 0.1, "test": 0.1}``)
    go to the named splits and the rest to ``"train"``.

    Each class keeps at least one training image; a class with enough images gets at least one
    image in each named split. The same targets, fractions and seed always give the same split.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], **{name: [] for name in fractions}}
    for label in np.unique(targets):
        indices = rng.permutation(np.flatnonzero(targets == label))
        start = 0
        for name, fraction in fractions.items():
            count = int(round(len(indices) * fraction))
            if fraction > 0 and count == 0 and len(indices) - start > 1:
                count = 1
            count = min(count, len(indices) - start - 1)  # leave one for training
            parts[name].append(indices[start : start + max(count, 0)])
            start += max(count, 0)
        parts["train"].append(indices[start:])
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}


def fingerprint(keys: list[str]) -> str:
    """A short, order-independent hash of a split's file keys (sha256, first 16 hex digits)."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode("utf-8"))
    return digest.hexdigest()[:16]
