"""The one-sided t-test of gpt.stats against closed forms and table values."""

import math

import pytest

from gpt.errors import UserError
from gpt.stats import one_sided_t_test, regularized_beta, student_t_cdf


@pytest.mark.parametrize("t", [-30.0, -3.1, -1.0, -0.2, 0.0, 0.7, 2.5, 40.0])
def test_t_distribution_matches_its_closed_forms(t):
    assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize(
    "t, df, cdf",  # two-sided 95% / 98% / 99.8% points of the t table
    [(2.776445, 4, 0.975), (3.746947, 4, 0.99), (2.570582, 5, 0.975), (7.173182, 4, 0.999), (2.228139, 10, 0.975)],
)
def test_t_distribution_matches_the_table(t, df, cdf):
    assert student_t_cdf(t, df) == pytest.approx(cdf, abs=1e-6)
    assert student_t_cdf(-t, df) == pytest.approx(1 - cdf, abs=1e-6)


def test_incomplete_beta_of_known_values():
    assert regularized_beta(0.3, 1, 1) == pytest.approx(0.3)  # uniform
    assert regularized_beta(0.3, 2, 1) == pytest.approx(0.09)  # x^2
    assert regularized_beta(0.5, 3.5, 3.5) == pytest.approx(0.5)  # symmetric


def test_one_sided_test_of_seeds():
    below = one_sided_t_test([1.49, 1.51, 1.50, 1.48, 1.50], target=1.555)
    assert (below.n, below.mean, below.min, below.max) == (5, pytest.approx(1.496), 1.48, 1.51)
    assert below.std == pytest.approx(0.011401754)
    assert below.t == pytest.approx((1.496 - 1.555) / (0.011401754 / math.sqrt(5)))
    assert below.p_value == pytest.approx(1.5934493e-4, rel=1e-6)  # scipy.stats.ttest_1samp(..., alternative='less')
    above = one_sided_t_test([1.56, 1.57, 1.55], target=1.555)
    assert above.p_value > 0.5
    with pytest.raises(UserError, match="at least 2"):
        one_sided_t_test([1.5], target=1.555)
