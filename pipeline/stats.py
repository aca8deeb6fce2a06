"""The project's one statistics module (the report, the findings and MLflow all take their intervals from here).

Paired comparisons of variants for small n: BCa bootstrap intervals, effect sizes, exact sign-flip permutation
tests, Holm's correction across the variants compared, and the minimum detectable difference at the study's n.

A study trains every variant on the same prompts and seeds, so each object of a variant has a twin in the baseline:
the unit of analysis is the per-object difference d_i = variant_i − baseline_i (n = prompts × seeds), which removes
the prompt-to-prompt spread (a torus is harder than a sphere under every variant) from the comparison.

- Interval of a mean and of a mean difference: bias-corrected and accelerated (BCa) bootstrap,
  `scipy.stats.bootstrap(method="BCa")`, seeded, so a re-run gives the same digits.
- Effect size: d_z = mean(d) / sd(d) (Cohen's standardised mean of paired differences; 0.2 small, 0.5 medium,
  0.8 large), so a difference can be judged against the run-to-run noise of the metric.
- p-value: the exact two-sided sign-flip permutation test of mean(d) = 0 (all 2^n sign patterns for n ≤ 16,
  `scipy.stats.permutation_test`), which assumes only that d is symmetric under the null.
- Multiple comparisons: Holm's step-down adjustment across the k variants compared with the baseline, per metric
  (family-wise error ≤ α for each metric's k comparisons), `statsmodels.stats.multitest.multipletests`.
- Minimum detectable difference (MDD): the true mean difference this design detects with probability `power` at the
  Bonferroni level α/k (conservative for Holm), from the paired t approximation
  MDD = (t_{1−α/2k, n−1} + t_{power, n−1}) · s_d / √n, with s_d pooled over the k comparisons. "No detectable
  difference" therefore means "|Δ| is probably below the MDD", not "the variants are equal".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8
EXACT_UP_TO = 16
"""Sign-flip tests enumerate all 2^n patterns up to this n; above it, 100,000 seeded random flips."""


def bca_interval(values: Sequence[float], n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """BCa bootstrap interval of the mean of `values` (NaN for fewer than 2 values; a point when all are equal)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    res = sps.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=level,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # degenerate acceleration (e.g. one outlier): percentile
        lo, hi = (float(q) for q in np.quantile(res.bootstrap_distribution, [(1 - level) / 2, (1 + level) / 2]))
    return lo, hi


def sign_flip_pvalue(diff: Sequence[float], seed: int) -> float:
    """Two-sided p-value of mean(diff) = 0 by the sign-flip permutation test (exact for n ≤ EXACT_UP_TO)."""
    d = np.asarray(diff, dtype=np.float64)
    if len(d) == 0:
        return float("nan")
    if not np.any(d):
        return 1.0
    res = sps.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf if len(d) <= EXACT_UP_TO else 100_000,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(min(1.0, res.pvalue))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, by statsmodels (NaN entries stay NaN and do not count towards k)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(len(p), np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], alpha=ALPHA, method="holm")[1]
    return out.tolist()


def mdd(sd_diff: float, n: int, k: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable mean paired difference (module docstring) for n pairs and k comparisons."""
    if n < 2 or not np.isfinite(sd_diff):
        return float("nan")
    df = n - 1
    return float((sps.t.ppf(1 - alpha / (2 * max(k, 1)), df) + sps.t.ppf(power, df)) * sd_diff / math.sqrt(n))


def pairs_needed(sd_diff: float, k: int, target: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The smallest n whose MDD is at most `target` (None when sd_diff is unknown or n would exceed 10,000)."""
    if not np.isfinite(sd_diff) or target <= 0:
        return None
    if sd_diff == 0:
        return 2
    for n in range(2, 10_001):
        if mdd(sd_diff, n, k, alpha, power) <= target:
            return n
    return None


@dataclass
class Comparison:
    """One variant against the baseline on one metric, over the n objects both have."""

    variant: str
    metric: str
    n: int
    mean: float
    mean_ci: tuple[float, float]
    delta: float
    delta_ci: tuple[float, float]
    d_z: float
    p: float
    p_holm: float = float("nan")
    mdd: float = float("nan")
    sd_pooled: float = float("nan")
    """sd of the paired differences pooled over the study's comparisons (what the MDD is computed from)."""

    @property
    def separates(self) -> bool:
        """Holm-adjusted p below α."""
        return bool(np.isfinite(self.p_holm) and self.p_holm < ALPHA)


def compare(
    per_object: dict[str, dict[tuple[str, int], float]],
    baseline: str,
    metric: str,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[dict[str, Comparison], float]:
    """Every variant of {variant: {(prompt_id, seed): value}} against `baseline` on the objects both have.

    Returns ({variant: Comparison}, MDD for this metric at the study's n and k). The baseline's own row has Δ = 0
    and no p-value. Holm's adjustment runs over the non-baseline variants.
    """
    base = per_object[baseline]
    out: dict[str, Comparison] = {}
    diffs: list[np.ndarray] = []
    for v, scores in per_object.items():
        common = sorted(set(scores) & set(base))
        d = np.array([scores[k] - base[k] for k in common], dtype=np.float64)
        own = np.array(list(scores.values()), dtype=np.float64)
        is_base = v == baseline
        sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
        out[v] = Comparison(
            variant=v,
            metric=metric,
            n=len(common),
            mean=float(own.mean()) if len(own) else float("nan"),
            mean_ci=bca_interval(own, n_resamples, seed),
            delta=float(d.mean()) if len(d) else float("nan"),
            delta_ci=(0.0, 0.0) if is_base else bca_interval(d, n_resamples, seed),
            d_z=float("nan") if is_base or not sd else float(d.mean() / sd),
            p=float("nan") if is_base else sign_flip_pvalue(d, seed),
        )
        if not is_base and len(d) > 1:
            diffs.append(d)
    others = [v for v in out if v != baseline]
    for v, p in zip(others, holm([out[v].p for v in others]), strict=True):
        out[v].p_holm = p
    n = min((len(d) for d in diffs), default=0)
    pooled = math.sqrt(float(np.mean([d.var(ddof=1) for d in diffs]))) if diffs else float("nan")
    m = mdd(pooled, n, len(others))
    for c in out.values():
        c.mdd, c.sd_pooled = m, pooled
    return out, m
