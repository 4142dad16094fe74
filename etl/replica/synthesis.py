"""Integer vote synthesis that hits published totals exactly (pure numpy, no I/O)."""

from __future__ import annotations

import numpy as np


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split `total` into integers proportional to `weights` by largest remainder."""
    weights = np.asarray(weights, dtype=np.float64)
    if total == 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    quotas = weights * (total / weights.sum())
    shares = np.floor(quotas).astype(np.int64)
    short = int(total - shares.sum())
    if short > 0:
        # stable sort so ties go to the earlier row: the same seed gives the same split
        order = np.argsort(-(quotas - shares), kind="stable")
        shares[order[:short]] += 1
    return shares


def fit_margins(
    seed: np.ndarray, row_totals: np.ndarray, col_totals: np.ndarray, iterations: int = 60
) -> np.ndarray:
    """Iterative proportional fitting of a positive matrix to row and column totals."""
    fitted = np.maximum(np.asarray(seed, dtype=np.float64), 1e-9)
    rows = np.asarray(row_totals, dtype=np.float64)
    cols = np.asarray(col_totals, dtype=np.float64)
    for _ in range(iterations):
        fitted *= (rows / fitted.sum(axis=1))[:, None]
        fitted *= (cols / fitted.sum(axis=0))[None, :]
    return fitted


def integer_table(
    seed: np.ndarray, row_totals: np.ndarray, col_totals: np.ndarray
) -> np.ndarray:
    """Non-negative integer matrix near `seed` with exactly these row and column totals.

    Every column but the last is apportioned exactly; the last column (invalid ballots,
    the largest per row) takes each row's rounding remainder, so it is exact too because
    the totals agree. Rare negative remainders are repaired by moving votes between rows
    within one column, which keeps both margins.
    """
    row_totals = np.asarray(row_totals, dtype=np.int64)
    col_totals = np.asarray(col_totals, dtype=np.int64)
    if int(row_totals.sum()) != int(col_totals.sum()):
        raise ValueError(f"row total {row_totals.sum()} != column total {col_totals.sum()}")
    fitted = fit_margins(seed, row_totals, col_totals)
    table = np.zeros(fitted.shape, dtype=np.int64)
    for j in range(fitted.shape[1] - 1):
        table[:, j] = apportion(int(col_totals[j]), fitted[:, j])
    table[:, -1] = row_totals - table[:, :-1].sum(axis=1)
    while (negative := np.flatnonzero(table[:, -1] < 0)).size:
        row = int(negative[0])
        deficit = int(-table[row, -1])
        column = int(np.argmax(table[row, :-1]))
        donor = int(np.argmax(table[:, -1]))
        table[row, column] -= deficit
        table[donor, column] += deficit
        table[:, -1] = row_totals - table[:, :-1].sum(axis=1)
    return table


def integer_rows(seed: np.ndarray, row_totals: np.ndarray) -> np.ndarray:
    """Integer matrix whose rows are `row_totals` split proportionally to `seed`'s rows."""
    return np.vstack(
        [apportion(int(total), weights) for total, weights in zip(row_totals, seed, strict=True)]
    )
