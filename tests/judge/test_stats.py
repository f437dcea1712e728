"""Summary statistics: the binomial sampler, the seeded bootstrap, histogram, paired difference."""

import random
import statistics
from collections import Counter

from judge.stats import binomial, bootstrap_ci, describe, histogram, paired_difference, resampled_means


def test_binomial_moments():
    rng = random.Random(0)
    for n, p in [(40, 0.1), (1000, 0.3), (50_000, 0.01), (2000, 0.8)]:
        draws = [binomial(rng, n, p) for _ in range(20_000)]
        mean, var = n * p, n * p * (1 - p)
        assert abs(statistics.fmean(draws) - mean) < 4 * (var / 20_000) ** 0.5
        assert abs(statistics.pvariance(draws) / var - 1) < 0.05
        assert 0 <= min(draws) and max(draws) <= n


def test_bootstrap_is_pinned():
    scores = [(i * 37) % 101 for i in range(110)]
    assert bootstrap_ci(Counter(scores)) == [44.3452, 55.082]  # mean 49.75
    assert bootstrap_ci(Counter(reversed(scores))) == [44.3452, 55.082]
    assert bootstrap_ci(Counter()) is None
    assert bootstrap_ci(Counter([70])) == [70.0, 70.0]


def test_multinomial_resampling_matches_direct_resampling():
    """Counting draws per distinct value is the same bootstrap as drawing the values one by one."""
    rng = random.Random(7)
    scores = [rng.choice([0, 20, 50, 55, 80, 90, 100]) for _ in range(300)]
    fast = sorted(resampled_means(Counter(scores), 4000, random.Random(1)))
    direct_rng = random.Random(2)
    direct = sorted(statistics.fmean(direct_rng.choices(scores, k=len(scores))) for _ in range(4000))
    sd = statistics.pstdev(scores) / len(scores) ** 0.5
    for q in (0.025, 0.5, 0.975):
        assert abs(fast[int(q * 3999)] - direct[int(q * 3999)]) < 0.25 * sd


def test_describe_and_histogram():
    scores = [0, 9, 10, 55, 90, 99, 100, 100]
    figures = describe(Counter(scores))
    assert figures["mean"] == 57.875
    assert figures["median"] == 72.5
    assert figures["std"] == round(statistics.pstdev(scores), 4)
    assert figures["ci95"][0] < figures["mean"] < figures["ci95"][1]
    assert histogram(Counter(scores)) == {"edges": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
                                          "counts": [2, 1, 0, 0, 0, 1, 0, 0, 0, 4]}
    assert describe(Counter())["mean"] is None and describe(Counter())["ci95"] is None


def test_figures_from_counts_match_statistics_on_the_list():
    """The figures come from {score: count} (flat memory at any size); they are the ones
    `statistics` gives on the list of scores."""
    rng = random.Random(5)
    for n in (1, 2, 3, 10, 101, 1000):
        scores = [rng.choice([0, 1, 50, 51, 99, 100, rng.randrange(101)]) for _ in range(n)]
        figures = describe(Counter(scores))
        assert figures["mean"] == round(statistics.fmean(scores), 4)
        assert figures["median"] == float(statistics.median(scores))
        assert figures["std"] == round(statistics.pstdev(scores), 4)


def test_paired_difference():
    differences = Counter([10, 0, 30, -5])
    paired = paired_difference(differences)
    assert paired["n"] == 4
    assert paired["mean_diff"] == round((10 + 0 + 30 - 5) / 4, 4)
    assert paired["ci95"][0] <= paired["mean_diff"] <= paired["ci95"][1]
    assert paired_difference(Counter()) == {"n": 0, "mean_diff": None, "ci95": None}
