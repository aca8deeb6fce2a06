"""Paired statistics of a study (pipeline/stats.py) and the findings page built on them (pipeline/findings.py)."""

import csv
import json

import numpy as np
import pytest
from scipy import stats as sps

from pipeline import findings, stats


def test_holm_matches_the_step_down_definition():
    # sorted p: 0.01 (x3), 0.03 (x2), 0.04 (x1) → 0.03, 0.06, 0.06 (monotone); NaN stays out of k
    assert stats.holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(stats.holm([0.01, float("nan")])[1])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_sign_flip_test_is_exact():
    # all n differences positive: only the all-positive and all-negative sign patterns are as extreme → 2 / 2^n
    assert stats.sign_flip_pvalue([0.3, 0.1, 0.2, 0.5, 0.4], seed=0) == pytest.approx(2 / 32)
    assert stats.sign_flip_pvalue([0.0, 0.0, 0.0], seed=0) == 1.0
    # symmetric differences: the observed mean 0 is matched by every pattern
    assert stats.sign_flip_pvalue([1.0, -1.0], seed=0) == 1.0


def test_bca_interval_is_reproducible_and_brackets_the_mean():
    x = np.random.default_rng(3).normal(0.5, 0.1, size=16)
    lo, hi = stats.bca_interval(x, 5000, seed=0)
    assert (lo, hi) == stats.bca_interval(x, 5000, seed=0)  # same seed, same digits
    assert lo < x.mean() < hi
    # near the normal-theory interval for normal data, same width
    z = 1.96 * x.std() / 4
    assert lo == pytest.approx(x.mean() - z, abs=0.02) and hi - lo == pytest.approx(2 * z, rel=0.1)
    # skewed data: BCa moves the interval towards the long tail, where the percentile interval undercovers
    e = np.random.default_rng(4).exponential(1.0, size=16)
    pct = sps.bootstrap((e,), np.mean, n_resamples=5000, method="percentile", rng=np.random.default_rng(0))
    b_lo, b_hi = stats.bca_interval(e, 5000, seed=0)
    assert b_lo > pct.confidence_interval.low and b_hi > pct.confidence_interval.high + 0.1
    assert stats.bca_interval([0.2, 0.2, 0.2], 1000, 0) == (0.2, 0.2)
    assert all(np.isnan(stats.bca_interval([0.2], 1000, 0)))


def test_minimum_detectable_difference():
    # n = 16 pairs, k = 3 comparisons, sd of the differences 1: (t_{1-0.05/6, 15} + t_{0.8, 15}) / 4
    assert stats.mdd(1.0, 16, 3) == pytest.approx((2.6937 + 0.8662) / 4, abs=1e-3)
    assert stats.mdd(0.04, 16, 3) == pytest.approx(0.0356, abs=1e-4)  # 5 IoU points are detectable at sd 0.04
    assert np.isnan(stats.mdd(1.0, 1, 3))
    # the pairs needed for a target: the first n whose MDD reaches it
    assert stats.mdd(0.04, 15, 3) > 0.036 >= stats.mdd(0.04, 16, 3)
    assert stats.pairs_needed(0.04, 3, 0.036) == 16
    assert stats.pairs_needed(0.0, 3, 0.05) == 2 and stats.pairs_needed(float("nan"), 3, 0.05) is None


def test_mdd_has_the_power_it_claims():
    """Simulated studies with a true difference equal to the MDD are detected about 80 % of the time (a
    single comparison, k = 1, normal differences)."""
    rng = np.random.default_rng(0)
    n, sd = 16, 1.0
    delta = stats.mdd(sd, n, 1)
    hits = [sps.ttest_1samp(rng.normal(delta, sd, n), 0).pvalue < 0.05 for _ in range(4000)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.03)


def _evals(shift: dict[str, float], n_prompts: int = 8, seeds: int = 2, noise: float = 0.02):
    """rprecision.json-like dicts: per-object iou = prompt difficulty + variant shift + noise; colour/shape too."""
    rng = np.random.default_rng(1)
    difficulty = rng.uniform(0.2, 0.7, n_prompts)
    out = {}
    for v, s in shift.items():
        geo, objects = [], []
        for p in range(n_prompts):
            for seed in range(seeds):
                pid = f"a-thing{p}-{p:08x}"
                geo.append(
                    {
                        "prompt_id": pid,
                        "seed": seed,
                        "iou": float(difficulty[p] + s + rng.normal(0, noise)),
                        "fog": 0.1,
                        "chamfer": 0.05,
                        "normal_consistency": 0.7,
                        "silhouette_iou": 0.6,
                    }
                )
                for mode, key in (("color", "score"), ("geo", "shape_score")):
                    objects.append({"prompt_id": pid, "seed": seed, "clip": "c.pt", "mode": mode, key: 1.0})
        out[v] = {"models": {"c.pt": {}}, "objects": objects, "geometry": {"objects": geo}}
    return out


def test_findings_separate_a_real_difference_and_state_the_mdd_otherwise(tmp_path):
    evals = _evals({"world-w10-uniform": 0.0, "world-w3-uniform": 0.10, "world-w30-uniform": 0.0})
    base = {
        "prompts": {"benchmark": "primitives"},
        "guidance": {"name": "world"},
        "train": {"steps": 400, "batch_views": 4},
    }
    configs = {v: json.loads(json.dumps(base)) for v in evals}
    for v, w in zip(evals, (10.0, 3.0, 30.0), strict=True):
        configs[v]["guidance"]["scale"] = w
    md = findings.write("sweep-test", evals, configs, tmp_path, n_resamples=2000)
    assert "Paired differences against w = 10.0" in md
    rows = {(r["metric"], r["label"]): r for r in csv.DictReader((tmp_path / "findings.csv").open())}
    assert rows[("iou", "w = 3.0")]["verdict"] == "better"
    assert float(rows[("iou", "w = 3.0")]["delta"]) == pytest.approx(0.10, abs=0.02)
    assert float(rows[("iou", "w = 3.0")]["p_holm"]) < 0.001
    assert rows[("iou", "w = 30.0")]["verdict"] == "no detectable difference"
    assert rows[("iou", "w = 10.0")]["verdict"] == "baseline"
    # identical per-object values: Δ = 0 exactly, p = 1, no difference claimed
    assert (
        rows[("fog", "w = 3.0")]["verdict"] == "identical on every object" and float(rows[("fog", "w = 3.0")]["p"]) == 1
    )
    assert "Every variant scores exactly as w = 10.0 on every one of the 16 paired objects." in md
    assert "nan" not in md.replace("Finan", "")  # no undefined d_z printed
    assert "w = 3.0 is better: Δ = +0.0" in md and "detects |Δ| ≥" in md
    assert "| 3D IoU | 0.0" in md.split("## What this design can detect")[1]
    assert (tmp_path / "findings.png").stat().st_size > 10_000
    # same inputs, same page: a re-run reproduces the findings to the digit
    assert findings.write("sweep-test", evals, configs, tmp_path / "again", n_resamples=2000) == md
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("**[sweep-test](sweep-test.md)** — 3 variants, n = 16 paired objects")
    assert "- 3D IoU: w = 3.0 better (+0.0" in summary and "the others within the MDD of 0.0" in summary
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "other.summary.md").write_text("**[other](other.md)** — an earlier study\n")
    findings.publish(tmp_path, "sweep-test", docs)
    assert "](sweep-test.png)" in (docs / "sweep-test.md").read_text()
    assert (docs / "sweep-test.png").read_bytes() == (tmp_path / "findings.png").read_bytes()
    assert (docs / "README.md").read_text() == (
        findings.INDEX_HEADER + "\n**[other](other.md)** — an earlier study\n" + f"\n{summary}"
    )
    assert readme.read_text() == "# x\n"  # publish writes only under its destination


def test_config_text_cannot_break_the_published_pages(tmp_path):
    """A string setting that differs between variants reaches the labels; markers, tags, table bars and links in it
    are escaped, so a re-publish leaves nothing behind."""
    hostile = "<!-- /findings:x --> | [a](http://x) `c`"
    configs = {
        "a": {"guidance": {"negative_prompt": "plain"}},
        "b": {"guidance": {"negative_prompt": hostile}},
    }
    names, varying = findings.labels(configs)
    assert varying == ["guidance.negative_prompt"]
    assert names["b"] == "guidance.negative_prompt = &lt;!-- /findings:x --&gt; \\| [a]\\(http://x) 'c'"
    assert "<!--" not in names["b"] and "|" not in names["b"].replace("\\|", "")


def test_findings_lists_prompts_that_fail_under_every_variant(tmp_path):
    evals = _evals({"a": 0.0, "b": 0.0})
    for ev in evals.values():
        for o in ev["geometry"]["objects"]:
            if o["prompt_id"].startswith("a-thing0-"):
                o["iou"] = 0.05
    configs = {
        "a": {"prompts": {"benchmark": "p"}, "guidance": {"name": "world"}, "train": {"steps": 1, "batch_views": 1}}
    }
    configs["b"] = json.loads(json.dumps(configs["a"]))
    md = findings.write("s", evals, configs, tmp_path, n_resamples=500)
    assert "Failing under every variant (mean 3D IoU < 0.2): a thing0." in md


def test_labels_ignore_keys_added_since_an_object_was_trained():
    """The schedule sweep's baseline objects were configured before `train.guidance_debug_every` existed: their
    config.yaml lacks it, which must not make it a 'varied' setting (it labelled every variant '…, = None / 0')."""
    from pipeline.config import from_dict
    from pipeline.findings import labels

    new = from_dict({"schedule": {"name": "hifa"}}).to_dict()
    old = from_dict({}).to_dict()
    del old["train"]["guidance_debug_every"]
    names, varying = labels({"base": old, "hifa": new})
    assert varying == ["schedule.name"] and names == {"base": "schedule = uniform", "hifa": "schedule = hifa"}
