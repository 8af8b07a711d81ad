"""Win rate of model A over baseline B with a Wilson score interval.

Ties count half a win: the rate is (wins + ties / 2) / n, and the interval is Wilson's (1927) score
interval for that proportion over the n compared items (z = 1.96 for 95 %). Wilson stays inside
[0, 1] and behaves at small n and rates near 0 or 1, where the normal approximation does not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairwiseSummary:
    wins: int
    losses: int
    ties: int
    n: int
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    interval: str = "wilson"
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def pairwise_summary(outcomes: list[str]) -> PairwiseSummary:
    """outcomes: "win" | "loss" | "tie" per compared item."""
    wins, losses, ties = outcomes.count("win"), outcomes.count("loss"), outcomes.count("tie")
    n = wins + losses + ties
    if n == 0:
        return PairwiseSummary(0, 0, 0, 0, None, None, None)
    rate = (wins + 0.5 * ties) / n
    low, high = wilson_interval(wins + 0.5 * ties, n)
    return PairwiseSummary(wins, losses, ties, n, rate, low, high)
