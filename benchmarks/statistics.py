"""Paired statistics of per-image outcomes: is model B really better than model A on the same test images?

Every function works on boolean vectors ``survived`` (``True`` where the model still classified image ``i`` correctly
after the attack, see :mod:`benchmarks.outcomes`) or on the counts of the paired 2x2 table of two such vectors of
the same images::

                      B survives   B broken
        A survives        a           b
        A broken          c           d          n = a + b + c + d

so ``acc_A = (a + b) / n``, ``acc_B = (a + c) / n`` and the paired difference is ``d = acc_B - acc_A = (c - b) / n``:
only the discordant images (b, c) carry information about it.

* Interval: Newcombe's (1998) hybrid score interval for the difference of paired proportions, "method 10"
  (Statistics in Medicine 17: 2635-2650), as given in Altman et al., *Statistics with Confidence* (2000, p. 52) and
  Fagerland, Lydersen & Laake, *Statistical Analysis of Contingency Tables* (2017, ch. 8, "Newcombe square-and-add"):
  the Wilson score intervals of the two accuracies combined with the estimated correlation of the two accuracies
  (:func:`newcombe_paired_interval`). It keeps within [-1, 1], is not degenerate when b = c = 0, and its coverage is
  close to nominal for small and large n (Newcombe 1998; Fagerland et al. 2014).
* Test: the exact McNemar test, ``scipy.stats.binomtest(b, b + c, 0.5)`` two-sided; p = 1 when b + c = 0
  (:func:`mcnemar_exact_p`).
* A difference is "distinguishable from zero" when its 95% interval excludes 0 (for these data that is, up to rare
  boundary cases, p < 0.05 as well; both are reported).

Seeds: seed s of A is paired with seed s of B and the per-seed tables are pooled (:func:`pooled_comparison`); see
there why the exact test on pooled discordant counts stays exact, under which assumption, and the image-level test
reported beside it.

Per model there is also the worst case over the attacks of a threat model (:func:`worst_case`) and the attack
agreement table (:func:`attack_agreement`).
"""

import functools
import math

import numpy as np

from .outcomes import unpack

#: Tolerance when comparing an attack's budget with the threat model's eps: budgets are multiples of 1/255
#: (0.0039), so 1e-6 only absorbs the rounding of a stored eps (0.0313725 for 8/255).
EPS_TOLERANCE = 1e-6


@functools.lru_cache(maxsize=8)
def _z(confidence):
    from scipy.stats import norm

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


def wilson_interval(k, n, confidence=0.95):
    """Wilson's (1927) score interval for a proportion k / n:

    ``(2k + z^2 -/+ z sqrt(z^2 + 4 k (n - k) / n)) / (2 (n + z^2))``, z the normal quantile of (1 + confidence) / 2.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n > 0, got k = {k}, n = {n}")
    z = _z(confidence)
    centre, half = 2 * k + z * z, z * math.sqrt(z * z + 4 * k * (n - k) / n)
    return (centre - half) / (2 * (n + z * z)), (centre + half) / (2 * (n + z * z))


def paired_counts(first, second):
    """The paired table (a, b, c, d) of two outcome vectors of the same images (see the module docstring):
    a both survive, b only ``first`` survives, c only ``second`` survives, d neither."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"paired outcome vectors must be 1-D of the same length, got shapes {first.shape} and "
                         f"{second.shape}")
    return (int(np.sum(first & second)), int(np.sum(first & ~second)), int(np.sum(~first & second)),
            int(np.sum(~first & ~second)))


def newcombe_paired_interval(a, b, c, d, confidence=0.95):
    """Newcombe's (1998) hybrid score interval ("method 10") for ``theta = acc_B - acc_A = (c - b) / n``.

    With ``p_A = (a + b) / n``, ``p_B = (a + c) / n`` and their Wilson intervals ``[l_A, u_A]``, ``[l_B, u_B]``
    (:func:`wilson_interval`)::

        L = theta - sqrt((p_B - l_B)^2 - 2 psi (p_B - l_B)(u_A - p_A) + (u_A - p_A)^2)
        U = theta + sqrt((u_B - p_B)^2 - 2 psi (u_B - p_B)(p_A - l_A) + (p_A - l_A)^2)

    where psi estimates the correlation of the two accuracies from ``A = a d - b c`` and the product ``P`` of the
    four margins (a+b)(c+d)(a+c)(b+d): ``psi = (A - n/2) / sqrt(P)`` if ``A > n/2``, ``0`` if ``0 <= A <= n/2``,
    ``A / sqrt(P)`` if ``A < 0``, and ``0`` when a margin is empty (Newcombe's continuity-corrected phi; the
    Wilson intervals themselves are not continuity-corrected).

    :return: (low, high), clipped to [-1, 1].
    """
    n = a + b + c + d
    if n <= 0 or min(a, b, c, d) < 0:
        raise ValueError(f"newcombe_paired_interval needs non-negative counts with n > 0, got {(a, b, c, d)}")
    p_a, p_b = (a + b) / n, (a + c) / n
    l_a, u_a = wilson_interval(a + b, n, confidence)
    l_b, u_b = wilson_interval(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if margins == 0:
        psi = 0.0
    elif cross > n / 2:
        psi = (cross - n / 2) / math.sqrt(margins)
    elif cross >= 0:
        psi = 0.0
    else:
        psi = cross / math.sqrt(margins)
    theta = (c - b) / n
    low = theta - math.sqrt(max(0.0, (p_b - l_b) ** 2 - 2 * psi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2))
    high = theta + math.sqrt(max(0.0, (u_b - p_b) ** 2 - 2 * psi * (u_b - p_b) * (p_a - l_a) + (p_a - l_a) ** 2))
    return max(-1.0, low), min(1.0, high)


def mcnemar_exact_p(b, c):
    """Exact (conditional) McNemar test of acc_A = acc_B: given the m = b + c discordant images, b ~ Bin(m, 1/2)
    under the null; two-sided p = ``scipy.stats.binomtest(b, m, 0.5).pvalue`` = min(1, 2 P(X <= min(b, c))), and
    1 when m = 0."""
    from scipy.stats import binomtest

    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b = {b}, c = {c}")
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def sign_flip_p(differences):
    """Exact two-sided sign-flip (randomisation) test that integer per-image differences ``D_i`` are symmetric
    about 0, the images being the independent units.

    Under the null each ``D_i`` is ``+|D_i|`` or ``-|D_i|`` with probability 1/2, independently; with m_k images
    of ``|D_i| = k``, ``T = sum D_i = 2 S - W`` where ``W = sum |D_i|`` and ``S = sum_k k X_k``, ``X_k ~ Bin(m_k,
    1/2)`` independent; S's distribution is their exact convolution and ``p = P(|T| >= |t_observed|)``. With
    ``D_i`` in {-1, 0, 1} (one seed) this is exactly :func:`mcnemar_exact_p`.
    """
    from scipy.stats import binom

    differences = np.asarray(differences)
    if differences.size and not np.issubdtype(differences.dtype, np.integer):
        raise ValueError(f"sign_flip_p needs integer differences, got dtype {differences.dtype}")
    sizes = np.abs(differences[differences != 0]).astype(np.int64)
    if sizes.size == 0:
        return 1.0
    observed = abs(int(differences.sum()))
    total = int(sizes.sum())
    pmf = np.ones(1)
    for k, m in zip(*np.unique(sizes, return_counts=True)):
        part = np.zeros(int(k) * int(m) + 1)
        part[::int(k)] = binom.pmf(np.arange(m + 1), m, 0.5)
        pmf = np.convolve(pmf, part)
    t = 2 * np.arange(total + 1) - total
    return float(min(1.0, pmf[np.abs(t) >= observed].sum()))


def paired_difference(first, second, confidence=0.95):
    """Paired comparison of two outcome vectors of the same images: ``second - first``.

    :return: dict with n, the table a, b, c, d, ``difference`` = (c - b) / n (a fraction; x100 for points),
        ``low``/``high`` (Newcombe's interval, :func:`newcombe_paired_interval`), ``p`` (exact McNemar,
        :func:`mcnemar_exact_p`) and ``distinguishable`` (the interval excludes 0).
    """
    a, b, c, d = paired_counts(first, second)
    n = a + b + c + d
    if n == 0:
        raise ValueError("paired_difference: no images")
    low, high = newcombe_paired_interval(a, b, c, d, confidence)
    return {"n": n, "a": a, "b": b, "c": c, "d": d, "difference": (c - b) / n, "low": low, "high": high,
            "p": mcnemar_exact_p(b, c), "distinguishable": bool(low > 0 or high < 0)}


def check_same_images(first, second, first_name="A", second_name="B"):
    """Raise ValueError unless two stored results (dicts with ``n`` and ``images``) are of the same test images."""
    mismatch = []
    for key in ("n", "images"):
        if first.get(key) is None or second.get(key) is None or first.get(key) != second.get(key):
            mismatch.append(key)
    if mismatch:
        raise ValueError(f"cannot pair {first_name} (n = {first.get('n')}, images {first.get('images')}) with "
                         f"{second_name} (n = {second.get('n')}, images {second.get('images')}): not the same test "
                         f"images ({' and '.join(mismatch)} differ)")


def outcome(result):
    """The per-image outcomes of a stored result, or None when it has none (files written before they were saved).

    :raises ValueError: when they are malformed or do not match the result's ``n``.
    """
    stored = result.get("survived") if isinstance(result, dict) else None
    if stored is None:
        return None
    survived = unpack(stored)
    if result.get("n") is not None and survived.size != result["n"]:
        raise ValueError(f"per-image outcomes of {survived.size} images for a result of n = {result['n']}")
    return survived


def paired_comparison(first, second, first_name="A", second_name="B", confidence=0.95):
    """:func:`paired_difference` of two stored results (``second - first``), after :func:`check_same_images`.

    :raises ValueError: different images, or a result without per-image outcomes.
    """
    check_same_images(first, second, first_name, second_name)
    vectors = []
    for name, result in ((first_name, first), (second_name, second)):
        survived = outcome(result)
        if survived is None:
            raise ValueError(f"{name} has no per-image outcomes ('survived')")
        vectors.append(survived)
    return paired_difference(*vectors, confidence=confidence)


def pooled_comparison(pairs, confidence=0.95):
    """Pool the paired comparisons of several seeds: ``pairs`` is a list of (first, second) outcome vectors, seed
    s of A with seed s of B, each pair of the same images.

    The vectors are concatenated: the pooled table is the sum of the per-seed tables, the pooled difference
    ``(c - b) / N`` (N = sum of n) is the n-weighted mean of the per-seed differences, and the interval and the
    McNemar test are computed on the pooled table.

    Why the exact test on pooled discordant counts stays exact: under the null that, in every seed pair, a
    discordant image is equally likely to favour either model independently of the others, ``b_s ~ Bin(m_s, 1/2)``
    given the m_s discordant images of seed s, and a sum of independent binomials with the same p = 1/2 is
    binomial, ``b ~ Bin(sum m_s, 1/2)``. So ``binomtest(b, b + c, 0.5)`` is the exact stratified test, no
    approximation. Its assumption is independence across seed pairs (the randomness is that of the test images;
    the trained models are fixed). Here every seed is evaluated on the same first n test images, so an image one
    method systematically wins on counts once per seed, which that independence ignores and which makes the
    pooled p-value and interval too optimistic when it happens. Hence also ``p_images``: :func:`sign_flip_p` on the
    per-image sums ``D_i = sum_s (second_s[i] - first_s[i])`` (images aligned by index: every subset is a prefix
    of the test split), exact with the images as the independent units whatever the dependence across seeds; for
    one seed it equals ``p``.

    :return: :func:`paired_difference`'s dict for the pooled table plus ``seeds`` (number of pairs) and
        ``p_images``.
    """
    pairs = [(np.asarray(f, dtype=bool), np.asarray(s, dtype=bool)) for f, s in pairs]
    if not pairs:
        raise ValueError("pooled_comparison: no seed pairs")
    for first, second in pairs:
        if first.shape != second.shape:
            raise ValueError(f"pooled_comparison: a seed pair of {first.size} and {second.size} images; pair "
                             "outcomes of the same images")
    result = paired_difference(np.concatenate([f for f, _ in pairs]), np.concatenate([s for _, s in pairs]),
                               confidence)
    per_image = np.zeros(max(f.size for f, _ in pairs), dtype=np.int64)
    for first, second in pairs:
        per_image[:first.size] += second.astype(np.int64) - first.astype(np.int64)
    result.update(seeds=len(pairs), p_images=sign_flip_p(per_image))
    return result


def _is_attack(name, result):
    """Attacks with per-image outcomes that are not corruptions or the trust checks."""
    return "/" not in name and not name.startswith("cifar10c") and isinstance(result, dict) and \
        "survived" in result and "checks" not in result


def worst_case(results, eps, attacks=None, tolerance=EPS_TOLERANCE):
    """Worst case over the attacks inside the threat model: an image survives only if it survives every attack
    (natural included) whose ``max_eps <= eps + tolerance``, on the common prefix: the first ``n = min n`` images.

    :param results: one model's ``results`` (attack name -> stored result).
    :param eps: the threat model's budget (the evaluation's ``config["eps"]``).
    :param attacks: consider only these attack names (e.g. the ones two models have in common); None: all.
    :return: None when no such attack has per-image outcomes, else a dict: accuracy, correct, n, images (the hash
        of the first n images, from an attack evaluated on exactly n), attacks (names, in ``results`` order),
        eps and survived (the boolean vector).
    :raises ValueError: malformed outcomes.
    """
    chosen = []
    for name, result in results.items():
        if attacks is not None and name not in attacks:
            continue
        if not _is_attack(name, result) or result.get("max_eps") is None:
            continue
        if result["max_eps"] <= eps + tolerance:
            chosen.append((name, result, outcome(result)))
    if not chosen:
        return None
    n = min(survived.size for _, _, survived in chosen)
    hashes = {}
    for name, result, survived in chosen:
        hashes.setdefault(survived.size, {}).setdefault(result.get("images"), []).append(name)
    for size, by_hash in hashes.items():
        if len(by_hash) > 1:  # one model, one n: the same prefix of the test split, else the file is inconsistent
            raise ValueError(f"worst case: attacks on {size} images with different image hashes: "
                             + "; ".join(f"{h}: {', '.join(names)}" for h, names in by_hash.items()))
    reference = next(r for _, r, s in chosen if s.size == n)
    survived = np.logical_and.reduce([s[:n] for _, _, s in chosen])
    return {"accuracy": float(survived.mean()) if n else float("nan"), "correct": int(survived.sum()), "n": n,
            "images": reference.get("images"), "attacks": [name for name, _, _ in chosen], "eps": eps,
            "survived": survived}


def attack_agreement(results, attacks=None):
    """For each ordered pair of attacks (X, Y) of one model: how many images X breaks that Y misses, on their
    common prefix (the first min(n_X, n_Y) images): ``count = sum(~survived_X & survived_Y)``.

    A large count for (X, Y) means Y is missing adversarial examples X finds; (natural, Y) > 0 means Y "repaired"
    misclassified clean images (possible for attacks from a random start).

    :param results: one model's ``results``; corruptions and the trust checks are left out.
    :param attacks: the attack names to consider, in this order (default: those with outcomes, in ``results``
        order).
    :return: {"attacks": [names], "cells": [{"breaks": X, "misses": Y, "count": int, "n": int}, ...]} over all
        ordered pairs X != Y.
    """
    names = [name for name in (attacks if attacks is not None else results)
             if name in results and _is_attack(name, results[name])]
    vectors = {name: outcome(results[name]) for name in names}
    cells = []
    for x in names:
        for y in names:
            if x == y:
                continue
            n = min(vectors[x].size, vectors[y].size)
            count = int(np.sum(~vectors[x][:n] & vectors[y][:n]))
            cells.append({"breaks": x, "misses": y, "count": count, "n": n})
    return {"attacks": names, "cells": cells}
