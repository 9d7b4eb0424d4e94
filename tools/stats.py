"""Statistics over seeds: mean ± sd, 95% Student-t intervals, and the strongest attacker of a run.

A sweep repeats each configuration over a few seeds (3–5), so an interval for the mean must allow for
an sd estimated from those few values: the Student t interval, mean ± t(0.975, n−1)·sd/√n. A normal
quantile (1.96) would be too narrow by a factor of 2.2 at n = 3. One value has no sd and no interval:
`interval` returns None there rather than a zero-width one.

Standard library only, like tools.collect: scipy is installed with scikit-learn, but the report must
not need more than matplotlib. t(0.975, df) comes from a table for df 1..30 (four decimals, as in any
printed t table) and from Fisher's expansion around the normal quantile beyond (error < 1e-7 there).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from statistics import NormalDist

LEVEL = 0.95
DASH = "–"  # what a table shows for a value it does not have

# t(0.975, df) for df = 1..30.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (the 95% two-sided interval's)."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be a whole number >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(0.975)
    # Fisher (1925) / Cornish–Fisher series of the t quantile in powers of 1/df.
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


def _values(values) -> list:
    """The numbers among `values`: None (a metric a run lacks) is left out, never counted as 0."""
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def sd(values):
    """Sample standard deviation (n − 1 in the denominator); None for fewer than two values."""
    vals = _values(values)
    return statistics.stdev(vals) if len(vals) >= 2 else None


@dataclass(frozen=True)
class Estimate:
    """Mean of n values with its sd and 95% t interval (sd, lo, hi are None when n == 1)."""
    mean: float
    n: int
    sd: float | None = None
    lo: float | None = None
    hi: float | None = None

    @property
    def half_width(self):
        return None if self.lo is None else (self.hi - self.lo) / 2


def estimate(values):
    """Estimate of the mean of `values` (None when there are none)."""
    vals = _values(values)
    if not vals:
        return None
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return Estimate(m, 1)
    s = sd(vals)
    h = t975(len(vals) - 1) * s / math.sqrt(len(vals))
    return Estimate(m, len(vals), s, m - h, m + h)


def strongest(mse_by_attack: dict):
    """(attack, MSE) with the lowest MSE, i.e. the best reconstruction; ties go to the first listed.
    None when no attack has an MSE."""
    have = [(a, m) for a, m in mse_by_attack.items() if m is not None]
    return min(have, key=lambda am: am[1]) if have else None


def fmt(v, spec: str) -> str:
    return DASH if v is None else format(v, spec)


def fmt_g(v) -> str:
    return DASH if v is None else f"{v:g}"


def fmt_mean_sd(mean, sd, spec: str) -> str:
    """'mean ± sd', the mean alone without an sd (one value), DASH without a mean."""
    if mean is None:
        return DASH
    return format(mean, spec) + ("" if sd is None else f" ± {format(sd, spec.lstrip('+'))}")
