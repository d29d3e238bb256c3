"""Paired bootstrap intervals of a difference between runs' corpus-level scores (Koehn 2004, Bisani and Ney 2004).

The utterances of a set are drawn with replacement, one draw shared by every run compared: the interval is
of the difference on the same speech, so what the runs have in common (hard utterances) cancels. The statistic
is computed from the column sums of the drawn utterances' counts, as the corpus-level score is from the whole
set's, e.g. CER_a - CER_b = (sum err_a - sum err_b) / sum ref_chars on each draw; the interval is the
percentiles of the draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

RESAMPLES = 1000
SEED = 0  # fixed: RESULTS.md prints the same interval each time it is written
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the whole set
    low: float
    high: float


def paired_bootstrap(counts, statistic: Callable[[np.ndarray], float], resamples: int = RESAMPLES,
                     seed: int = SEED, confidence: float = CONFIDENCE) -> Interval:
    """``counts``: one row per utterance, the same utterance's counts of every run compared in its columns;
    ``statistic``: the column sums -> the figure (e.g. a difference of CERs)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or len(counts) == 0:
        raise ValueError(f"counts must be a non-empty (utterances, columns) array, not of shape {counts.shape}")
    n = len(counts)
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(counts[rng.integers(0, n, n)].sum(axis=0)) for _ in range(resamples)])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(statistic(counts.sum(axis=0))), float(low), float(high))
