"""The HTML report opened in a real headless browser (Chromium): every image and turntable loads and plays from the
file alone (no external references), and our results stay apart from the paper's quoted table."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.report import build
from tests.test_evaluate import _synthetic_eval

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

CHECK = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const imgs = [...document.images], vids = [...document.querySelectorAll('video')];
  const r = document.createElement('pre'); r.id = 'browser-check';
  r.textContent = JSON.stringify({
    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    videos: vids.length, playable: vids.filter(v => v.readyState >= 2 && v.videoWidth > 0).length,
    cards: document.querySelectorAll('.card').length,
    mlflow: [...document.querySelectorAll('a.mlflow')].map(a => a.getAttribute('href')),
    headings: [...document.querySelectorAll('h2,h3')].map(h => h.textContent)});
  document.body.appendChild(r);
}, 1500));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
def test_report_opens_in_a_headless_browser(tmp_path):
    import imageio.v3 as iio

    media = {}
    for v in ("v10", "v30"):
        for i in range(2):
            d = tmp_path / "res" / v / f"a-red-cube-{i:08x}" / "seed0"
            d.mkdir(parents=True)
            iio.imwrite(d / "sheet.png", np.full((4 * 18 + 2, 40, 3), 200, np.uint8))
            frames = (np.random.default_rng(i).random((6, 32, 32, 3)) * 255).astype(np.uint8)
            iio.imwrite(d / "turntable.mp4", frames, extension=".mp4", fps=4)
            media.setdefault(v, []).extend([d / "sheet.png", d / "turntable.mp4"])
    evals = {"v10": _synthetic_eval(10.0, [1, 1]), "v30": _synthetic_eval(30.0, [1, 0])}
    for ev in evals.values():  # object ids as the media folders name them
        for o in ev["objects"]:
            o["prompt_id"] = f"a-red-cube-{int(o['prompt_id'][1:]):08x}"
    gt = {"models": {"m.pt": {m: {"r_precision": 0.97} for m in ("color", "geo", "geo_shape")}}}
    out = tmp_path / "report"
    runs = {"uri": "sqlite:///mlflow.db", "experiment_id": "3", "variants": {"v10": {"objects": {}}}}
    runs["variants"]["v10"]["objects"]["a-red-cube-00000000/seed0"] = "0f1e"  # one object tracked, one not
    build(evals, out, gt, bootstrap=200, media=media, runs=runs)
    shutil.rmtree(tmp_path / "res")  # self-contained: the page must not need the results folder
    page = (out / "index.html").read_text()
    assert not re.findall(r"src='(?!data:)", page)
    assert re.findall(r"href='([^']*)'", page) == ["http://127.0.0.1:5000/#/experiments/3/runs/0f1e"]
    assert page.count("not tracked in MLflow") == 3
    (tmp_path / "check.html").write_text(page.replace("</body>", "") + CHECK)
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (tmp_path / "check.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    assert seen["images"] == seen["loaded"] == 1 + 1 + 4  # plot, gallery, one sheet per object card
    assert seen["videos"] == seen["playable"] == 4
    assert seen["cards"] == 4
    assert seen["mlflow"] == ["http://127.0.0.1:5000/#/experiments/3/runs/0f1e"]
    heads = seen["headings"]
    # the first screen is the gallery and one line per object; the numbers follow
    assert page.index("alt='gallery'") < page.index("Objects at a glance") < page.index("Our results (measured here)")
    assert heads.index("Objects at a glance") < heads.index("Our results (measured here)") < heads.index("Objects")
    assert any(h.startswith("DreamFusion Table 1 (quoted from the paper") for h in heads)
    assert heads.index("Objects") < next(i for i, h in enumerate(heads) if h.startswith("DreamFusion Table 1"))
