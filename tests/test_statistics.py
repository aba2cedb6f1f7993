"""Paired statistics of per-image outcomes against independent references: a published interval, scipy's exact
tests, brute-force enumeration and counts done by hand."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from benchmarks import statistics as st
from benchmarks.outcomes import pack


def result(survived, images="h", max_eps=8 / 255, **extra):
    survived = np.asarray(survived, dtype=bool)
    return {"accuracy": float(survived.mean()), "correct": int(survived.sum()), "n": int(survived.size),
            "images": images, "max_eps": max_eps, "seconds": 0.1, "survived": pack(survived), **extra}


def test_newcombe_interval_matches_the_published_worked_example():
    """Cavo et al. (2012), complete response before/after consolidation therapy: the paired table 59, 6 / 16, 80
    in Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8, Newcombe's
    square-and-add interval: estimate -0.0621, 95% CI -0.1186 to -0.0046 (row margin minus column margin)."""
    # rows = first measurement: b = 6 (only the first positive), c = 16; the book's estimate is p1+ - p+1 = (b - c) / n,
    # ours is second - first = (c - b) / n, so the book's table is ours with b and c swapped
    low, high = st.newcombe_paired_interval(59, 16, 6, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    assert (16 - 6) / 161 == pytest.approx(0.0621, abs=5e-5)
    # and in our orientation the interval is mirrored
    low, high = st.newcombe_paired_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (0.0046, 0.1186)


def test_wilson_interval_is_scipys():
    for k, n in [(0, 10), (3, 10), (10, 10), (832, 1000), (1, 10000)]:
        ours = st.wilson_interval(k, n)
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert ours == pytest.approx((ref.low, ref.high), abs=1e-12)


def _multinomial(n, counts, probs):
    log = math.lgamma(n + 1) + sum(k * math.log(p) - math.lgamma(k + 1) if k else 0.0 for k, p in zip(counts, probs))
    return math.exp(log)


@pytest.mark.parametrize("probs", [(0.4, 0.1, 0.2, 0.3), (0.3, 0.2, 0.2, 0.3), (0.8, 0.02, 0.08, 0.1)])
def test_newcombe_interval_covers_the_true_difference_95_percent_of_the_time(probs):
    """Exact coverage by enumerating every paired table of n = 30 images: near the nominal 95% (Newcombe's
    method 10 is slightly conservative), where the simple Wald interval falls short."""
    n, theta = 30, probs[2] - probs[1]
    newcombe = wald = 0.0
    for a in range(n + 1):
        for b in range(n + 1 - a):
            for c in range(n + 1 - a - b):
                d = n - a - b - c
                weight = _multinomial(n, (a, b, c, d), probs)
                low, high = st.newcombe_paired_interval(a, b, c, d)
                newcombe += weight * (low - 1e-12 <= theta <= high + 1e-12)
                diff = (c - b) / n
                half = 1.959964 * math.sqrt(max(((b + c) / n - diff ** 2) / n, 0))
                wald += weight * (diff - half - 1e-12 <= theta <= diff + half + 1e-12)
    assert 0.945 <= newcombe <= 0.995
    assert wald < newcombe


def test_interval_edge_cases():
    low, high = st.newcombe_paired_interval(50, 0, 0, 50)  # no discordant image: 0 inside, not a point
    assert low < 0 < high and high - low > 0.01
    low, high = st.newcombe_paired_interval(0, 0, 10, 0)  # every image favours B
    assert 0 < low < high <= 1
    assert st.newcombe_paired_interval(3, 4, 5, 6) == pytest.approx(
        tuple(-x for x in reversed(st.newcombe_paired_interval(3, 5, 4, 6))))  # swapping A and B mirrors it
    with pytest.raises(ValueError):
        st.newcombe_paired_interval(0, 0, 0, 0)


def test_mcnemar_exact_p_is_the_binomial_test_of_the_discordant_images():
    # by hand: b = 1, c = 8: 2 * (C(9, 0) + C(9, 1)) / 2^9
    assert st.mcnemar_exact_p(1, 8) == pytest.approx(2 * (1 + 9) / 512)
    for b, c in [(0, 5), (7, 7), (12, 30), (300, 250)]:
        assert st.mcnemar_exact_p(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    assert st.mcnemar_exact_p(0, 0) == 1.0


def test_paired_difference_counts_by_hand():
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 0], bool)  # model A survives
    b = np.array([1, 0, 1, 1, 1, 1, 0, 1, 0, 1], bool)  # model B survives
    assert st.paired_counts(a, b) == (4, 2, 3, 1)  # both, only A, only B, neither
    out = st.paired_difference(a, b)
    assert (out["n"], out["b"], out["c"]) == (10, 2, 3)
    assert out["difference"] == pytest.approx(b.mean() - a.mean()) == pytest.approx(0.1)
    assert out["p"] == pytest.approx(binomtest(2, 5, 0.5).pvalue) and out["p"] == pytest.approx(1.0)
    assert (out["low"], out["high"]) == st.newcombe_paired_interval(4, 2, 3, 1)
    assert out["distinguishable"] is False
    strong = st.paired_difference(np.zeros(200, bool), np.r_[np.ones(40, bool), np.zeros(160, bool)])
    assert strong["distinguishable"] and strong["p"] < 0.05 and strong["low"] > 0


def _brute_sign_flip(differences):
    nonzero = [d for d in differences if d]
    observed = abs(sum(differences))
    hits = sum(abs(sum(s * abs(d) for s, d in zip(signs, nonzero))) >= observed
               for signs in itertools.product((-1, 1), repeat=len(nonzero)))
    return hits / 2 ** len(nonzero)


def test_sign_flip_test_brute_force_and_mcnemar():
    for differences in ([2, 2, -1, 1, 3, 0, 2], [1, -1, 0, 0, 3, -3, 2, 1, 1], [0, 0], [3, 3, 3, 2, 2, 1, -1]):
        assert st.sign_flip_p(np.array(differences)) == pytest.approx(_brute_sign_flip(differences))
    rng = np.random.default_rng(0)
    ones = rng.choice([-1, 0, 0, 1, 1], size=300)  # one seed: D in {-1, 0, 1}
    assert st.sign_flip_p(ones) == pytest.approx(st.mcnemar_exact_p(int((ones < 0).sum()), int((ones > 0).sum())))


def test_pooled_over_seeds_concatenates_the_paired_tables():
    rng = np.random.default_rng(1)
    pairs = [(rng.random(n) < 0.5, rng.random(n) < 0.6) for n in (400, 400, 400)]
    pooled = st.pooled_comparison(pairs)
    tables = [st.paired_counts(a, b) for a, b in pairs]
    b, c = sum(t[1] for t in tables), sum(t[2] for t in tables)
    assert (pooled["n"], pooled["b"], pooled["c"], pooled["seeds"]) == (1200, b, c, 3)
    assert pooled["difference"] == pytest.approx(np.mean([bb.mean() - aa.mean() for aa, bb in pairs]))
    assert pooled["p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    assert (pooled["low"], pooled["high"]) == st.newcombe_paired_interval(*[sum(t[i] for t in tables)
                                                                           for i in range(4)])
    per_image = sum(bb.astype(int) - aa.astype(int) for aa, bb in pairs)
    assert pooled["p_images"] == pytest.approx(st.sign_flip_p(per_image))
    one = st.pooled_comparison(pairs[:1])  # one seed: the same as the seed, both tests agree
    assert one["p_images"] == pytest.approx(one["p"]) and one["difference"] == st.paired_difference(*pairs[0])[
        "difference"]


def test_pooled_p_images_is_larger_when_an_image_counts_once_per_seed():
    """The same 12 images favour B in all 3 seeds: 36 discordant (image, seed) pairs for the pooled McNemar test,
    but only 12 independent images for the image-level test."""
    a = np.zeros(100, bool)
    b = np.r_[np.ones(12, bool), np.zeros(88, bool)]
    a[50:53] = True  # and 3 images favour A, also in every seed
    pooled = st.pooled_comparison([(a, b)] * 3)
    assert pooled["p"] == pytest.approx(binomtest(9, 45, 0.5).pvalue)
    assert pooled["p_images"] == pytest.approx(_brute_sign_flip([3] * 12 + [-3] * 3))
    assert pooled["p_images"] > 2 * pooled["p"]


def test_pairing_different_images_is_an_error_naming_both():
    first = result(np.ones(10, bool), images="aaaa")
    with pytest.raises(ValueError, match=r"AT seed 0 \(n = 10, images aaaa\).*PART seed 0 \(n = 12, images bbbb\)"):
        st.paired_comparison(first, result(np.ones(12, bool), images="bbbb"), "AT seed 0", "PART seed 0")
    with pytest.raises(ValueError, match="images differ"):
        st.paired_comparison(first, result(np.ones(10, bool), images="cccc"), "AT", "PART")
    old = {"accuracy": 0.5, "n": 10}
    with pytest.raises(ValueError, match="not the same test images"):  # an old result: no hash, never paired
        st.check_same_images(first, old, "AT", "PART")
    same = st.paired_comparison(first, result(np.r_[np.ones(5, bool), np.zeros(5, bool)], images="aaaa"))
    assert (same["b"], same["c"], same["difference"]) == (5, 0, -0.5)


def test_worst_case_over_the_threat_model_on_the_common_prefix():
    nat = [1, 1, 1, 1, 1, 1, 1, 0, 1, 1]
    pgd = [1, 0, 1, 1, 1, 1, 0, 0, 1, 1]
    aa = [1, 1, 0, 1, 1, 0]  # aa@6: the first 6 images
    results = {
        "natural": result(nat, images="p10", max_eps=0.0),
        "pgd-20": result(pgd, images="p10"),
        "aa": result(aa, images="p6"),
        "adaptive-pgd-20": result([0] * 10, images="p10", max_eps=12 / 255),  # outside the threat model
        "cifar10c-1/fog": result([0] * 10, images="p10", max_eps=None),  # a corruption
        "mma-20": {"accuracy": 0.0, "n": 10, "label": "MMA-20"},  # an old result, without outcomes
        "pgd-40": {**result([0] * 10, images="p10"), "max_eps": None},
        "trust": {"checks": [], "failed": []},
    }
    worst = st.worst_case(results, eps=0.0313725)  # 8/255 as stored with 7 decimals
    assert worst["attacks"] == ["natural", "pgd-20", "aa"]
    assert worst["n"] == 6 and worst["images"] == "p6"
    # by hand, images 0..5: nat 111111, pgd 101111, aa 110110 -> 100110
    assert worst["correct"] == 3 and worst["accuracy"] == pytest.approx(0.5)
    assert list(worst["survived"]) == [True, False, False, True, True, False]
    wider = st.worst_case(results, eps=12 / 255)
    assert "adaptive-pgd-20" in wider["attacks"] and wider["correct"] == 0
    assert st.worst_case(results, eps=8 / 255, attacks=["natural", "pgd-20"])["n"] == 10
    assert st.worst_case({"natural": {"accuracy": 0.9, "n": 10}}, eps=8 / 255) is None
    inconsistent = {**results, "mma-20": result([1] * 10, images="other")}  # 10 images, another hash
    with pytest.raises(ValueError, match="different image hashes"):
        st.worst_case(inconsistent, eps=8 / 255)


def test_attack_agreement_counts_by_hand():
    results = {"natural": result([1, 1, 1, 0, 1, 1], max_eps=0.0), "pgd-20": result([1, 0, 1, 0, 0, 1]),
               "aa": result([0, 0, 1, 0], images="p4"), "cifar10c-1/fog": result([0] * 6, max_eps=None)}
    table = st.attack_agreement(results)
    assert table["attacks"] == ["natural", "pgd-20", "aa"]
    cells = {(c["breaks"], c["misses"]): (c["count"], c["n"]) for c in table["cells"]}
    assert cells[("pgd-20", "natural")] == (2, 6)  # images 1 and 4
    assert cells[("natural", "pgd-20")] == (0, 6)
    assert cells[("aa", "pgd-20")] == (1, 4)  # image 0, on the first 4
    assert cells[("pgd-20", "aa")] == (0, 4)
    assert cells[("aa", "natural")] == (2, 4)
    assert len(cells) == 6
