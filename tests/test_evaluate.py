import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.evaluate import ClipScorer, EvaluationError, evaluate, mean_and_stderr, object_score, true_ranks
from pipeline.prompts import normalize
from pipeline.report import build
from pipeline.stats import bca_interval
from tests.tiny_models import save_tiny_clip


def test_true_ranks_and_deterministic_ties():
    sim = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.8], [0.3, 0.3, 0.3]])
    assert true_ranks(sim, 0).tolist() == [0, 2, 0]
    assert true_ranks(sim, 1).tolist() == [1, 0, 1]  # tie with an earlier caption counts against the truth
    assert true_ranks(sim, 2).tolist() == [2, 1, 2]


def test_object_score_combinations():
    txt = torch.eye(3)
    views = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.0], [1.0, 0.0, 0.3], [0.6, 0.5, 0.0]]), dim=-1)
    score, ranks, _ = object_score(views, txt, 0, "per-view")
    assert score == 0.75 and ranks.tolist() == [0, 1, 0, 0]
    score, ranks, _ = object_score(views, txt, 0, "mean-embedding")
    assert score == 1.0 and ranks.tolist() == [0]
    with pytest.raises(ValueError, match="unknown evaluate.combine"):
        object_score(views, txt, 0, "max")


def test_mean_and_stderr_exact():
    m, se = mean_and_stderr([1.0, 0.0, 1.0, 1.0])
    assert m == 0.75 and se == pytest.approx(np.std([1, 0, 1, 1], ddof=1) / 2)
    assert mean_and_stderr([1.0]) == (1.0, 0.0)


class FakeScorer:
    """Scores from hand-made embeddings: image embedding = one-hot of the caption it 'looks like'."""

    name = "fake"

    def __init__(self, captions, looks_like):
        self.captions, self.looks_like = captions, looks_like

    def texts(self, captions):
        return torch.eye(len(captions))

    def images(self, images):
        return torch.stack([torch.eye(len(self.captions))[int(v)] for v in images[:, 0, 0, 0]])


def test_r_precision_on_hand_made_embeddings():
    caps = ["a red cube.", "a blue cube.", "a red sphere."]
    objects = []
    # object 0 looks like itself in 2 of 2 views, object 1 in 1 of 2, object 2 in 0 of 2
    for i, looks in enumerate([[0, 0], [1, 2], [0, 1]]):
        views = torch.tensor(looks, dtype=torch.float32).view(2, 1, 1, 1).expand(2, 3, 2, 2)
        objects.append({"prompt_id": f"p{i}", "seed": 0, "text": caps[i], "views": {"color": views, "geo": views}})
    r = evaluate(objects, caps, [FakeScorer(caps, None)], "per-view", world=True)
    color = r["models"]["fake"]["color"]
    assert color["r_precision"] == pytest.approx(0.5) and color["n"] == 3
    assert color["stderr"] == pytest.approx(np.std([1, 0.5, 0], ddof=1) / np.sqrt(3))
    # shape-only: object 1's second view retrieves "a red sphere." (wrong shape), object 2's views are cubes
    assert r["models"]["fake"]["geo_shape"]["r_precision"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert r["chance"] == pytest.approx(1 / 3)
    row = next(o for o in r["objects"] if o["prompt_id"] == "p2" and o["mode"] == "color")
    assert row["top5"][0] in caps


def test_missing_caption_is_an_error():
    objects = [{"prompt_id": "x", "seed": 0, "text": "a dog.", "views": {}}]
    with pytest.raises(EvaluationError, match="not in the retrieval set"):
        evaluate(objects, ["a cat."], [], "per-view", world=False)


def test_caption_normalisation_matches_prompt_stage():
    assert normalize("A Red cube .") == "a red cube."


def test_tiny_clip_loads_through_clip_anytorch(tmp_path):
    path = save_tiny_clip(tmp_path / "clip.pt")
    s = ClipScorer(str(path), torch.device("cpu"))
    assert s.resolution == 32 and s.context_length == 16
    emb = s.images(torch.rand(3, 3, 64, 64))
    assert emb.shape == (3, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    assert s.texts(["a red cube.", "a blue torus."]).shape == (2, 64)
    with pytest.raises(EvaluationError, match="neither a clip-anytorch model name"):
        ClipScorer(str(tmp_path / "nope.pt"), torch.device("cpu"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EvaluationError, match="could not load CLIP"):
        ClipScorer(str(tmp_path / "bad.pt"), torch.device("cpu"))


def test_bootstrap_is_reproducible_and_covers_the_mean():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        x = rng.binomial(1, 0.6, size=60).astype(float)
        lo, hi = bca_interval(x, 500, seed=trial)
        assert (lo, hi) == bca_interval(x, 500, seed=trial)
        covered += lo <= 0.6 <= hi
    assert covered >= 88  # nominal 95 %


def test_one_number_gets_one_interval_in_the_report_and_the_findings():
    """The report's comparison and the findings compute their intervals with the same function, resamples and
    seed: the same objects give the same digits on both pages."""
    from pipeline import findings, report, stats

    rng = np.random.default_rng(1)
    keys = [(f"p{i}", 0) for i in range(12)]
    base = {k: float(x) for k, x in zip(keys, rng.uniform(0.4, 0.7, 12), strict=True)}
    other = {k: v + float(rng.normal(0.05, 0.02)) for k, v in base.items()}
    mean, lo, hi, dmean, dlo, dhi = report.paired(other, base, 2000, 0)
    evals = {
        v: {"objects": [], "geometry": {"objects": [{"prompt_id": p, "seed": s, "iou": x} for (p, s), x in d.items()]}}
        for v, d in (("a", base), ("b", other))
    }
    comps, _ = stats.compare({v: findings.per_object(ev, "iou") for v, ev in evals.items()}, "a", "iou", 2000, 0)
    assert comps["b"].mean_ci == (lo, hi) and comps["b"].delta_ci == (dlo, dhi)
    assert comps["b"].mean == pytest.approx(mean) and comps["b"].delta == pytest.approx(dmean)


def _synthetic_eval(scale, scores):
    objects = []
    for i, s in enumerate(scores):
        for mode in ("color", "geo"):
            objects.append(
                {
                    "prompt_id": f"p{i}",
                    "seed": 0,
                    "text": f"t{i}",
                    "clip": "m.pt",
                    "mode": mode,
                    "score": s,
                    "mean_rank": 0.0,
                    "top5": ["t0"],
                    **({"shape_score": s} if mode == "geo" else {}),
                }
            )
    summary = {
        m: {"r_precision": float(np.mean(scores)), "stderr": 0.1, "n": len(scores)}
        for m in ("color", "geo", "geo_shape")
    }
    return {
        "retrieval_set_size": 36,
        "models": {"m.pt": summary},
        "objects": objects,
        "guidance_scale": scale,
        "schedule": "uniform",
    }


def test_report_from_synthetic_results(tmp_path):
    import re

    media_dir = tmp_path / "res" / "v10" / "p0" / "seed0"
    media_dir.mkdir(parents=True)
    import imageio.v3 as iio

    iio.imwrite(media_dir / "sheet.png", np.full((4 * 18 + 2, 40, 3), 200, np.uint8))
    iio.imwrite(media_dir / "turntable.mp4", np.zeros((4, 16, 16, 3), np.uint8), extension=".mp4", fps=4)
    evals = {"v10": _synthetic_eval(10.0, [1, 1, 0, 1]), "v30": _synthetic_eval(30.0, [1, 0, 0, 1])}
    gt = {"models": {"m.pt": {m: {"r_precision": 0.97} for m in ("color", "geo", "geo_shape")}}}
    metrics = build(
        evals,
        tmp_path / "report",
        gt,
        bootstrap=200,
        media={"v10": [media_dir / "sheet.png", media_dir / "turntable.mp4"]},
    )
    # DVC metrics: the first variant's at the top (keys without a variant name, so experiments share columns),
    # every variant of a sweep under `variants`
    assert metrics["m"]["color"] == 0.75 and metrics["ground_truth"]["m"]["color"] == 0.97
    assert metrics["variants"]["v10"]["m"]["color"] == 0.75 and metrics["variants"]["v30"]["m"]["color"] == 0.5
    rows = list(csv.DictReader((tmp_path / "report/variants.csv").open()))
    assert [(r["variant"], r["guidance_scale"], r["m.color"]) for r in rows] == [
        ("v10", "10.0", "75.0"),
        ("v30", "30.0", "50.0"),
    ]
    table = (tmp_path / "report/table.md").read_text()
    assert "GT renders (ceiling)" in table and "DreamFusion (paper)" in table and "75.0 ± 10.0" in table
    comp = (tmp_path / "report/comparison.md").read_text()
    assert "| v30 | m | color | 50.0 |" in comp and "| -25.0 |" in comp
    html = (tmp_path / "report/index.html").read_text()
    refs = re.findall(r"src='([^']+)'", html)
    assert refs and all(
        r.startswith(("data:image/png;base64,", "data:video/mp4;base64,")) for r in refs
    )  # self-contained
    assert html.index("<h2>Our results (measured here)</h2>") < html.index("<h3>DreamFusion Table 1 (quoted")
    assert html.count("<div class='card'>") == 1 and "<h4>p0 · seed 0</h4>" in html and "data:video/mp4" in html
    assert json.loads((tmp_path / "report/metrics.json").read_text()) == metrics
    assert (tmp_path / "report/rprecision.csv").read_text().startswith("variant,guidance_scale")


def test_a_single_variant_report_compares_nothing_with_itself(tmp_path):
    """One variant: no Δ columns (all zeros against itself), no one-point plot on the page; the first thing on the
    page is one line per object."""
    build({"v10": _synthetic_eval(10.0, [1, 1, 0, 1])}, tmp_path / "report", None, bootstrap=200)
    comp = (tmp_path / "report/comparison.md").read_text()
    assert "Δ" not in comp and "| v10 | m | color | 75.0 | [" in comp
    page = (tmp_path / "report/index.html").read_text()
    assert "R-precision vs guidance weight" not in page and "Variants: R-precision" not in page
    assert page.index("Objects at a glance") < page.index("Our results (measured here)")
    assert page.count("<td>v10</td>") == 4  # one line per object


def test_bundled_evaluator_loads_and_checksum_is_verified(tmp_path):
    import shutil

    from tests.conftest import ROOT

    src = ROOT / "models/world-clip/world-clip.pt"
    s = ClipScorer(str(src), torch.device("cpu"))
    assert s.resolution == 32
    bad = tmp_path / "world-clip.pt"
    shutil.copy(src, bad)
    shutil.copy(src.with_suffix(".train.json"), tmp_path / "world-clip.train.json")
    data = bytearray(bad.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(EvaluationError, match="does not match"):
        ClipScorer(str(bad), torch.device("cpu"))
