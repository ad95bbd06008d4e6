"""Which models are worth considering when accuracy and latency both matter: a model is
dominated when another is at least as accurate and at least as fast, and strictly better in one."""

from __future__ import annotations

__all__ = ["mark_dominated"]


def _dominates(a: dict, b: dict, accuracy: str, cost: str) -> bool:
    at_least = a[accuracy] >= b[accuracy] and a[cost] <= b[cost]
    strictly = a[accuracy] > b[accuracy] or a[cost] < b[cost]
    return at_least and strictly


def mark_dominated(rows: list[dict], accuracy: str = "accuracy", cost: str = "latency_ms") -> list[dict]:
    """Set ``dominated_by`` on every row (None on the Pareto front: no other row dominates it).
    Rows missing either value are left out of the comparison and marked None."""
    scored = [row for row in rows if row.get(accuracy) is not None and row.get(cost) is not None]
    for row in rows:
        row["dominated_by"] = None
        if row not in scored:
            continue
        better = [other for other in scored if other is not row and _dominates(other, row, accuracy, cost)]
        if better:  # name the most accurate of the models that beat it
            row["dominated_by"] = max(better, key=lambda other: other[accuracy])["name"]
    return rows
