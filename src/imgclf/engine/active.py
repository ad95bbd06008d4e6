"""Which unlabelled images to label next: the ones whose labels would teach the model most.

Two things make a label worth having: the model is unsure about the image (its two most likely
classes are close, or for label sets, some label sits near its threshold), and the image is unlike
those already labelled or chosen (ten near-copies of one unsure photo teach what one does). Every
strategy works on the embeddings imgclf already computes (L2-normalized) and the bundle's
calibrated probabilities; ``bench/suggest.py`` measures them against random choice.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from imgclf.config import SUGGEST_STRATEGIES as STRATEGIES

__all__ = ["STRATEGIES", "choose_for_labelling", "uncertainty"]

# k-means groups at most (when many images are labelled already): k-means costs images x groups.
MAX_GROUPS = 500


def uncertainty(probabilities: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """0 (sure) to 1 (a coin toss) per image: one minus the margin between the two most likely
    classes; for label sets, the mean over labels of one minus |2p - 1|."""
    if multi_label:
        return (1 - np.abs(2 * probabilities - 1)).mean(axis=1)
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities))
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    return 1 - (top_two[:, 1] - top_two[:, 0])


def _normalized(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def _nearest_distance(points: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Euclidean distance from each point to its nearest anchor (inf without anchors)."""
    if len(anchors) == 0:
        return np.full(len(points), np.inf)
    squared = (points**2).sum(1)[:, None] - 2 * points @ anchors.T + (anchors**2).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(axis=1), 0))


def _greedy(points: np.ndarray, weights: np.ndarray, n: int, labelled: np.ndarray) -> list[int]:
    """Repeatedly the point with the largest weight x distance to everything labelled or chosen
    (weights of 1: k-center greedy, the core-set choice)."""
    distance = _nearest_distance(points, labelled)
    if not np.isfinite(distance).any():  # nothing labelled: start from the heaviest point
        distance = np.ones(len(points))
    chosen: list[int] = []
    for _ in range(min(n, len(points))):
        score = weights * distance
        score[chosen] = -np.inf
        index = int(np.argmax(score))
        chosen.append(index)
        distance = np.minimum(distance, np.linalg.norm(points - points[index], axis=1))
    return chosen


def _clusters(points: np.ndarray, unsure: np.ndarray, n: int, anchors: np.ndarray, seed: int,
              pick: str = "unsure") -> list[int]:  # fmt: skip
    """k-means over the unlabelled and the labelled images together, into as many groups as images
    labelled and to choose (at most MAX_GROUPS); from each of the largest groups holding no
    labelled image (then the largest others), one unlabelled image: the most typical (nearest the
    centre), or with ``pick="unsure"`` the most uncertain of the half nearest the centre."""
    n = min(n, len(points))
    everything = np.concatenate([points, anchors]) if len(anchors) else points
    groups = min(len(everything), n + len(anchors), max(n, MAX_GROUPS))
    with warnings.catch_warnings():  # duplicate images make fewer distinct groups: harmless here
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters=groups, n_init=1, max_iter=100, random_state=seed).fit(everything)
    group_of = kmeans.labels_[: len(points)]
    covered = set(kmeans.labels_[len(points) :].tolist())
    distance = np.linalg.norm(points - kmeans.cluster_centers_[group_of], axis=1)
    sizes = np.bincount(kmeans.labels_, minlength=groups)
    chosen: list[int] = []
    for group in sorted(range(groups), key=lambda group: (group in covered, -sizes[group])):
        members = np.flatnonzero(group_of == group)
        if len(members) == 0:
            continue
        if pick == "unsure":
            typical = members[distance[members] <= np.median(distance[members])]
            chosen.append(int(typical[np.argmax(unsure[typical])]))
        else:
            chosen.append(int(members[np.argmin(distance[members])]))
        if len(chosen) == n:
            return chosen
    rest = [int(i) for i in np.argsort(distance, kind="stable") if i not in set(chosen)]  # fewer groups than n
    return chosen + rest[: n - len(chosen)]


def choose_for_labelling(
    embeddings: np.ndarray,
    probabilities: np.ndarray,
    n: int,
    labelled: np.ndarray | None = None,
    strategy: str = "typical",
    multi_label: bool = False,
    seed: int = 0,
) -> list[int]:
    """Indices of the ``n`` images to label next, in the order to label them. ``labelled``:
    embeddings of images already labelled (the diversity terms keep away from them)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    n = min(n, len(embeddings))
    points = _normalized(np.asarray(embeddings, dtype=np.float64))
    anchors = _normalized(np.asarray(labelled, dtype=np.float64)) if labelled is not None and len(labelled) else \
        np.empty((0, points.shape[1]))  # fmt: skip
    unsure = uncertainty(np.asarray(probabilities, dtype=np.float64), multi_label)
    if strategy == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(len(points))[:n]]
    if strategy == "uncertainty":
        return [int(i) for i in np.argsort(-unsure, kind="stable")[:n]]
    if strategy == "diverse":
        return _greedy(points, np.ones(len(points)), n, anchors)
    if strategy == "weighted":
        return _greedy(points, unsure + 1e-3, n, anchors)
    return _clusters(points, unsure, n, anchors, seed, "unsure" if strategy == "typical-unsure" else "typical")
