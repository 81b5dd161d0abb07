"""Is a speed record real? A one-sided t-test over the final losses of several seeds.

    from gpt.stats import one_sided_t_test
    test = one_sided_t_test([1.49, 1.51, 1.50, 1.48, 1.50], target=1.555)
    test.p_value  # the chance of a mean this far below 1.555 if the true mean were 1.555

modded-nanogpt accepts a record only when this p-value is below 0.01. Student's t distribution is
computed here from the regularized incomplete beta function (a continued fraction), so no statistics
package is needed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from gpt.errors import UserError


@dataclass
class TTest:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1 in the denominator)
    min: float
    max: float
    target: float
    t: float  # (mean - target) / (std / sqrt(n))
    p_value: float  # one-sided: P(T <= t) with n - 1 degrees of freedom; small when the mean is below target

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def one_sided_t_test(values: list[float], target: float) -> TTest:
    """Test whether the mean of ``values`` is below ``target`` (H1: mean < target)."""
    n = len(values)
    if n < 2:
        raise UserError(f"a t-test needs at least 2 values, got {n}")
    mean, std = statistics.fmean(values), statistics.stdev(values)
    if std == 0:
        t = -math.inf if mean < target else (math.inf if mean > target else 0.0)
    else:
        t = (mean - target) / (std / math.sqrt(n))
    return TTest(n, mean, std, min(values), max(values), target, t, student_t_cdf(t, n - 1))


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t < 0 else 1.0
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2, 0.5)  # P(T > |t|)
    return tail if t < 0 else 1.0 - tail


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, by its continued fraction."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below this point: use the symmetry
        return 1.0 - regularized_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - log_beta(a, b)
    return math.exp(log_front) * beta_fraction(x, a, b)


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_fraction(x: float, a: float, b: float, eps: float = 1e-15, max_terms: int = 500) -> float:
    """The continued fraction 1 / (1 + d1 / (1 + d2 / (1 + ...))) of I_x(a, b), by Lentz's method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, max_terms + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # d_{2m}
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # d_{2m+1}
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result
