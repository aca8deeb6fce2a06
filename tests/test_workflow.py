"""The whole Snakefile on a tiny config (2 prompts, 2 variants, few steps, tiny models) in a temp dir."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import run_snakemake
from tests.tiny_models import save_tiny_clip

TINY = {
    "prompts": {"select": ["a red cube", "a blue sphere"]},
    "world": {"images_per_caption": 8, "resolution": 16},
    "render": {"resolution": 16, "samples": 16},
    "nerf": {"levels": [4, 8, 12], "unlock_steps": [0, 2]},
    "shading": {"albedo_steps": 2},
    "train": {"steps": 4, "batch_views": 2, "checkpoint_every": 2, "warmup_steps": 1},
    "mesh": {"resolution": 24},
    "views": {"azimuths": 2, "resolution": 16, "turntable_frames": 2, "samples": 16},
    "evaluate": {"clip_models": ["tiny-clip.pt"], "bootstrap": 100},
    "sweep": {"guidance.scale": [10, 30]},
}


def _scheduled(dry_run_output: str) -> set[str]:
    """Rule names in a dry run's job-stats table."""
    if "Job stats:" not in dry_run_output:
        return set()
    table = dry_run_output[dry_run_output.index("Job stats:") :]
    table = table[: table.index("total")]
    return {line.split()[0] for line in table.splitlines()[3:] if line.strip()}


def tiny_workdir(workdir):
    save_tiny_clip(workdir / "tiny-clip.pt")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return workdir


@pytest.mark.e2e
def test_full_tiny_run_with_mlflow(workdir):
    """As a newcomer starts: no mlflow.db, no results, 2 training jobs at once, no retries hiding a failure."""
    from mlflow.tracking import MlflowClient

    wd = tiny_workdir(workdir)
    assert not (wd / "mlflow.db").exists()
    run_snakemake(wd, "--configfile", "tiny.yaml", "--retries", "0")
    res = wd / "results/primitives"
    variants = ["world-w10-uniform", "world-w30-uniform"]
    for v in variants:
        ev = json.loads((res / v / "rprecision.json").read_text())
        assert ev["retrieval_set_size"] == 36 and set(ev["models"]["tiny-clip.pt"]) == {"color", "geo", "geo_shape"}
        assert len(list((res / v).glob("*/seed0/mesh.glb"))) == 2
    rep = wd / "reports/primitives"
    metrics = json.loads((rep / "metrics.json").read_text())
    assert set(metrics) == {"tiny-clip", "geometry", "ground_truth", "variants"} and set(metrics["variants"]) == set(
        variants
    )
    assert "GT renders (ceiling)" in (rep / "table.md").read_text()
    # geometry against the truth: per object, in the evaluation, the tables, the metrics and the HTML
    for v in variants:
        ev = json.loads((res / v / "rprecision.json").read_text())
        assert len(ev["geometry"]["objects"]) == 2
        assert set(ev["geometry"]["summary"]) == {
            "iou",
            "fog",
            "chamfer",
            "normal_consistency",
            "silhouette_iou",
            "iou_gain",
            "iou_scaled",
            "surface_error",
            "mesh_iou",
            "watertight",
            "mesh_silhouette_iou",
            "mesh_colour_psnr",
            "texture_psnr_gain",
        }
        for o in ev["geometry"]["objects"]:  # the untrained init scored on the same grid and threshold
            assert o["iou_gain"] == o["iou"] - o["init_iou"] and 0 <= o["init_iou"] <= 1 and 0 <= o["init_fog"] <= 1
        assert set(metrics["variants"][v]["geometry"]) == set(ev["geometry"]["summary"])
    assert "| world-w30-uniform | iou |" in (rep / "comparison.md").read_text()
    page = (rep / "index.html").read_text()
    assert "<h3>Geometry against the analytic primitives" in page
    assert "<h3>DreamFusion Table 1 (quoted from the paper" in page  # kept apart from our table

    client = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("primitives")
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'variant'")
    children = client.search_runs([exp.experiment_id], "tags.kind = 'object'")
    assert sorted(r.data.tags["variant"] for r in parents) == variants
    assert len(children) == 4
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in parents}
        assert c.info.status == "FINISHED" and "git_sha" in c.data.tags and "params_hash" in c.data.tags
        assert len(client.get_metric_history(c.info.run_id, "loss")) == 4
        assert "rprecision.tiny-clip.color" in c.data.metrics and "geometry.iou" in c.data.metrics
        assert c.data.tags["results_dir"].endswith(f"seed{c.data.tags['seed']}")
        arts = {a.path for a in client.list_artifacts(c.info.run_id, "object")}
        assert {"object/turntable.mp4", "object/mesh.glb", "object/mesh.obj", "object/texture.png"} <= arts
        assert c.data.metrics["views.mesh_colour_psnr"] > 0 and 0 <= c.data.metrics["views.mesh_silhouette_iou"] <= 1
    for p in parents:
        assert "rprecision.tiny-clip.color" in p.data.metrics
    # each object card of the report links to exactly its MLflow run
    links = re.findall(r"href='http://127.0.0.1:5000/#/experiments/(\w+)/runs/(\w+)'", page)
    assert sorted(links) == sorted((exp.experiment_id, c.info.run_id) for c in children)

    # Snakemake's own report: a Results section with the captioned outputs
    run_snakemake(wd, "--report", "snakemake-report.html", "--configfile", "tiny.yaml")
    snake_report = (wd / "snakemake-report.html").read_text()
    for text in ("not measured here", "minimum detectable difference", "findings.md", "gallery.png"):
        assert text in snake_report, text

    # nothing to do on a second run; changing one sweep value re-runs only that variant
    dry = run_snakemake(wd, "--configfile", "tiny.yaml", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # editing the code a rule runs re-runs it (rules run `python -m`, so the module files are inputs; Snakemake
    # compares their checksums, so a touch alone or an edit undone re-runs nothing)
    sds, report = wd / "pipeline/sds.py", wd / "pipeline/report.py"
    original = sds.read_text()
    sds.write_text(original + "\n# an edit\n")
    assert _scheduled(run_snakemake(wd, "--configfile", "tiny.yaml", "-n").stdout) >= {
        "train",
        "mesh",
        "views",
        "evaluate",
        "report",
        "track",
    }
    sds.write_text(original)
    report.write_text(report.read_text() + "\n# an edit\n")  # track runs before the report: only it re-runs
    assert _scheduled(run_snakemake(wd, "--configfile", "tiny.yaml", "-n").stdout) == {"report", "all"}
    # editing how results are logged to MLflow re-runs tracking (and the report that links its runs), no training
    tracking_src = wd / "pipeline/tracking.py"
    tracking_src.write_text(tracking_src.read_text() + "\n# an edit\n")
    assert _scheduled(run_snakemake(wd, "--configfile", "tiny.yaml", "-n").stdout) == {"track", "report", "all"}
    # nested --config overrides arrive as strings and are coerced
    dry = run_snakemake(wd, "--configfile", "tiny.yaml", "--config", 'train={"lr": 0.05}', "-n").stdout
    assert "train" in _scheduled(dry)
    bad = run_snakemake(wd, "--configfile", "tiny.yaml", "--config", 'train={"lr": "fast"}', "-n", check=False)
    assert bad.returncode != 0 and "train.lr must be a number, got 'fast'" in bad.stdout + bad.stderr
    # the study's findings: every variant paired against the first, with the verdict per metric
    found = (rep / "findings.md").read_text()
    assert "Paired differences against w = 10" in found and "| 3D IoU | w = 30" in found
    # another study over the same variants (its own report folder) trains nothing: the objects are shared
    dry = run_snakemake(wd, "--configfile", "tiny.yaml", "--config", "study=other", "-n").stdout
    assert _scheduled(dry) == {"findings", "report", "track", "all"}
    readme = "# a user's README\n<!-- findings:primitives -->\n<!-- /findings:primitives -->\n"
    (wd / "README.md").write_text(readme)
    run_snakemake(wd, "publish", "--configfile", "tiny.yaml")  # the target first: --configfile takes a list
    assert (wd / "README.md").read_text() == readme  # publish writes only under docs/findings/
    assert "**[primitives](primitives.md)** — 2 variants" in (wd / "docs/findings/README.md").read_text()
    assert (wd / "docs/findings/primitives.md").read_text().count("](primitives.png)") == 1
    assert (wd / "docs/findings/primitives.png").read_bytes() == (rep / "findings.png").read_bytes()
    (wd / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "sweep": {"guidance.scale": [10, 50]}}))
    dry = run_snakemake(wd, "--configfile", "tiny.yaml", "-n")
    assert "variant=world-w50-uniform" in dry.stdout and "variant=world-w10-uniform" not in dry.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.e2e
def test_dvc_repro_experiments_and_remote(workdir, tmp_path):
    """The README's DVC section word for word on a tiny config (three pipeline runs, ~4 min): repro, push, two
    experiments side by side in `dvc exp show` with the same metric columns, metrics diff, plots, and a clone that
    after `dvc pull` and `snakemake --touch` has nothing to re-run."""
    wd = tiny_workdir(workdir)
    base = yaml.safe_load((wd / "params.yaml").read_text())
    merged = {**base, **{k: v for k, v in TINY.items() if k != "sweep"}}
    merged["prompts"] = {**base["prompts"], **TINY["prompts"]}
    merged["tracking"] = {"enabled": False}
    (wd / "params.yaml").write_text(yaml.safe_dump(merged))
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "dvc.yaml"), wd / "dvc.yaml")
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(wd),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }

    def sh(*cmd, cwd=wd):
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        assert p.returncode == 0, f"{cmd}: {p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p.stdout

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "init")
    sh("dvc", "repro")
    assert json.loads((wd / "reports/primitives/metrics.json").read_text())
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "baseline")
    baseline = (wd / "reports/primitives/metrics.json").read_text()
    sh("dvc", "push")
    # two experiments as the README runs them: the same metric columns, one row each
    sh("dvc", "exp", "run", "-S", "guidance.scale=30", "-n", "w30")
    sh("dvc", "exp", "run", "-S", "guidance.scale=50", "-n", "w50")
    rows = _exp_rows(json.loads(sh("dvc", "exp", "show", "--json")))
    by_scale = {r["params"]["guidance"]["scale"]: r["metrics"] for r in rows if r["metrics"]}
    assert {10, 30, 50} <= set(by_scale), by_scale
    columns = {frozenset(_flat(m)) for m in by_scale.values()}
    assert len(columns) == 1 and "tiny-clip.color" in next(iter(columns)) and "geometry.iou" in next(iter(columns))
    assert "metrics.json" in sh("dvc", "metrics", "diff", "HEAD", "w30", "--all")
    assert "R-precision (%) vs guidance weight" in sh("dvc", "plots", "show", "--json")
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(wd), str(clone), cwd=tmp_path)
    sh("dvc", "remote", "add", "-f", "-d", "local", str(tmp_path / "remote"), cwd=clone)
    sh("dvc", "pull", cwd=clone)
    assert (clone / "reports/primitives/metrics.json").read_text() == baseline
    assert list((clone / "results/primitives").glob("*/*/seed0/model.safetensors"))
    # the README's one step after a pull: Snakemake then has nothing to re-run
    sh("snakemake", "--touch", "--cores", "1", cwd=clone)
    dry = sh("snakemake", "-n", cwd=clone)
    assert "Nothing to be done" in dry, dry[-3000:]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _exp_rows(shown):
    """(params of params.yaml, metrics of metrics.json) of every revision in `dvc exp show --json`."""
    rows = []

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "params" in data:
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                metrics = next(iter((data.get("metrics") or {}).values()), {}).get("data", {})
                rows.append({"params": params, "metrics": metrics})
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(shown)
    return rows


@pytest.mark.parametrize("preset", [None, "configs/compare-priors.yaml"])
def test_fresh_clone_does_not_retrain_committed_weights(workdir, preset):
    """git checks out models/ before params.yaml, so by mtime a fresh clone's weights look older than their inputs;
    the default run (and a learned-prior run) must still use the committed weights, never retrain them."""
    import time

    t0 = time.time() - 100
    for path in (workdir / "models").rglob("*"):
        os.utime(path, (t0, t0))
    os.utime(workdir / "params.yaml", (t0 + 50, t0 + 50))
    args = ["-n"] + (["--configfile", preset] if preset else [])
    out = run_snakemake(workdir, *args).stdout
    table = out[out.index("Job stats:") : out.index("total", out.index("Job stats:"))]
    scheduled = {line.split()[0] for line in table.splitlines()[3:] if line.strip()}
    assert any(r == "train" or r.startswith("train_job") for r in scheduled) and "evaluate" in scheduled, table
    assert not scheduled & {
        "train_evaluator",
        "train_world_unet",
        "measure_world",
        "train_world_ldm",
        "measure_world_ldm",
    }, table


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_plots_render_offline(tmp_path):
    """dvc.yaml's plots, as DVC templates them, rendered to SVG without network (Vega bundled in vl-convert)."""
    from tests.conftest import ROOT

    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT)}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text("prompts:\n  benchmark: primitives\n")
    rep = tmp_path / "reports/primitives"
    rep.mkdir(parents=True)
    (rep / "variants.csv").write_text(
        "variant,guidance_scale,schedule,world-clip.color,world-clip.geo_shape,iou,fog,silhouette_iou\n"
        "world-w10-uniform,10.0,uniform,95.3,95.3,0.50,0.06,0.65\n"
        "world-w30-uniform,30.0,uniform,93.8,90.6,0.47,0.09,0.63\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.dvc_plots", "--out", "plots"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "plots/index.html").read_text()
    assert "R-precision (%) vs guidance weight" in page and "geometry vs guidance weight" in page
    assert page.count("<svg") == 2 and "<script" not in page and "cdn" not in page.lower()  # no stray third plot
    assert "world-clip.color" in page and "iou" in page  # one series per metric, named in the legend


def test_dvc_plot_axes_are_fitted_to_the_data():
    """Quantitative axes start where the data does (not at zero) with room on each side, so two guidance weights
    do not sit on the plot's edges."""
    from pipeline.dvc_plots import fit_axes

    spec = {
        "layer": [{"encoding": {"x": {"field": "guidance_scale", "type": "quantitative"}, "y": {"type": "nominal"}}}]
    }
    x = fit_axes(spec)["layer"][0]["encoding"]["x"]
    assert x["scale"] == {"zero": False, "nice": True, "padding": 24}
    assert "scale" not in spec["layer"][0]["encoding"]["y"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("preset", "save", "per_job"),
    [("configs/sd21-coco153.yaml", "save_tiny_sd", 2), ("configs/if-coco153.yaml", "save_tiny_if", 1)],
    ids=["sd21", "if"],
)
def test_gpu_presets_run_end_to_end_with_tiny_models(workdir, preset, save, per_job):
    """The SD and IF presets' own settings (field, cameras, shading, background, schedule, CFG convention) through
    the whole workflow on a CPU, with tiny models of the real component types in place of the real weights:
    2 COCO prompts × a few steps → mesh, views, evaluation (tiny CLIP), report. SD trains both objects in one job
    (train.objects_per_job: 2), IF one job per object."""
    import tests.tiny_models as tiny

    save_tiny_clip(workdir / "tiny-clip.pt")
    model = getattr(tiny, save)(workdir / "tiny-model")
    small = {
        "prompts": {
            "select": ["A blue bicycle parked by a metal gate.", "an orange bike leaning on a pole in the snow"]
        },
        "seeds": [0],
        "guidance": {"model": str(model), "latent_resolution": 32},
        "nerf": {"unlock_steps": [1, 2]},
        "render": {"resolution": 16, "samples": 16},
        "shading": {"albedo_steps": 2},
        "train": {
            "steps": 3,
            "device": "cpu",
            "warmup_steps": 1,
            "checkpoint_every": 2,
            "guidance_debug_every": 3,
            "objects_per_job": per_job,
        },
        "mesh": {"resolution": 24},
        "views": {"azimuths": 2, "resolution": 16, "samples": 16, "turntable_frames": 2},
        "evaluate": {"clip_models": ["tiny-clip.pt"], "bootstrap": 100},
        "tracking": {"enabled": False},
    }
    (workdir / "small.yaml").write_text(yaml.safe_dump(small))
    run_snakemake(workdir, "--configfile", preset, "small.yaml", "--retries", "0")
    res = workdir / "results/coco153"
    (variant,) = [p for p in res.iterdir() if (p / "rprecision.json").exists()]
    ev = json.loads((variant / "rprecision.json").read_text())
    assert ev["retrieval_set_size"] == 153 and set(ev["models"]["tiny-clip.pt"]) == {"color", "geo"}
    assert len(list(variant.glob("*/seed0/mesh.glb"))) == 2
    assert len(list(variant.glob("*/seed0/previews/guidance-step000003.png"))) == 2
    metrics = [json.loads(p.read_text()) for p in variant.glob("*/seed0/metrics.json")]
    assert [m["objects_in_job"] for m in metrics] == [per_job, per_job]
    assert "GT renders" not in (workdir / "reports/coco153/table.md").read_text()  # no ceiling outside the world
