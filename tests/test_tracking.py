"""MLflow tracking: jobs never open the store; the one `track` process creates it atomically and logs the files."""

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from pipeline import config as cfgmod
from pipeline import live_logging, tracking


def _fake_results(root: Path, variant: str = "world-w10-uniform", objects: int = 2, steps: int = 3) -> Path:
    """A results tree as the jobs leave it: config.yaml, per-object metrics.json / log.jsonl, rprecision.json."""
    vdir = root / "results/primitives" / variant
    cfg = cfgmod.from_dict({"tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"}})
    cfgmod.save_resolved(cfg, vdir / "config.yaml")
    prompts = []
    evals = []
    for i in range(objects):
        pid = f"p{i}"
        prompts.append({"id": pid, "text": f"prompt {i}"})
        obj = vdir / pid / "seed0"
        obj.mkdir(parents=True)
        lines = [{"step": s, "loss": 1.0 / (s + 1), "lr": 0.1, "time": 1_700_000_000.0 + 2 * s} for s in range(steps)]
        (obj / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        metrics = {"seed": 0, "guidance_scale": 10.0, "device": "cpu", "final_loss": 0.5, "wall_seconds": 1.0}
        metrics |= {"started_at": 1_700_000_000.0 + i, "finished_at": 1_700_000_000.0 + 2 * steps + i}
        (obj / "metrics.json").write_text(json.dumps(metrics))
        (obj / "sheet.png").write_bytes(b"png")
        evals.append({"prompt_id": pid, "seed": 0, "clip": "m.pt", "mode": "color", "score": 1.0})
    rp = {"models": {"m.pt": {"color": {"r_precision": 1.0, "stderr": 0.0}}}, "objects": evals}
    (vdir / "rprecision.json").write_text(json.dumps(rp))
    (root / "results/primitives/prompts.json").write_text(json.dumps({"prompts": prompts}))
    return vdir


def _track(root: str, out: str, queue) -> None:
    try:
        os.chdir(root)
        rec = tracking.log_benchmark(
            [Path(root) / "results/primitives/world-w10-uniform"],
            Path(root) / "results/primitives/prompts.json",
            Path(out),
        )
        queue.put(("ok", len(rec["variants"]["world-w10-uniform"]["objects"])))
    except BaseException as exc:  # report, not hang
        queue.put(("error", repr(exc)))


@pytest.mark.parametrize("round_", range(4))
def test_two_processes_on_a_missing_store_at_once(tmp_path, round_):
    """Today's race: two processes opening a new SQLite store at once half-migrate it for good."""
    _fake_results(tmp_path)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_track, args=(str(tmp_path), str(tmp_path / f"rec{i}.json"), queue)) for i in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [("ok", 2), ("ok", 2)], results
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("primitives")
    children = client.search_runs([exp.experiment_id], "tags.kind = 'object'")
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'variant'")
    assert len(children) == 2 and len(parents) == 1  # the second process replaced the first one's records
    assert not list(tmp_path.glob(".mlflow.db.*"))  # no temp store left behind


def test_records_are_logged_with_params_and_history(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vdir = _fake_results(tmp_path, steps=5)
    rec = tracking.log_benchmark([vdir], tmp_path / "results/primitives/prompts.json", tmp_path / "mlflow.json")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(rec["uri"])
    run = client.get_run(rec["variants"]["world-w10-uniform"]["objects"]["p0/seed0"])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    # the runs carry the training's own times, not the tracking job's
    assert [m.timestamp for m in history] == [1_700_000_000_000 + 2000 * s for s in range(5)]
    assert (run.info.start_time, run.info.end_time) == (1_700_000_000_000, 1_700_000_010_000)
    parent = client.get_run(rec["variants"]["world-w10-uniform"]["parent"])
    assert (parent.info.start_time, parent.info.end_time) == (1_700_000_000_000, 1_700_000_011_000)
    assert "time" not in run.data.metrics and "final.started_at" not in run.data.metrics
    assert run.data.metrics["final.final_loss"] == 0.5
    assert run.data.metrics["rprecision.m.color"] == 1.0
    # per-object constants are params, never metrics
    assert run.data.params["object.seed"] == "0" and run.data.params["object.guidance_scale"] == "10.0"
    assert not any(k in run.data.metrics for k in ("final.seed", "final.guidance_scale"))
    assert run.data.tags["results_dir"] == str((vdir / "p0/seed0").resolve())
    assert run.data.tags["prompt"] == "prompt 0"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "object")} == {"object/sheet.png"}
    # what the report's object cards link to: the MLflow UI page of exactly this run
    from pipeline.report import mlflow_run_url

    assert rec["experiment_id"] == client.get_experiment_by_name("primitives").experiment_id
    url = mlflow_run_url(rec, "world-w10-uniform", "p0/seed0")
    assert url == f"http://127.0.0.1:5000/#/experiments/{rec['experiment_id']}/runs/{run.info.run_id}"
    assert mlflow_run_url({**rec, "uri": "https://mlflow.lab:8443/"}, "world-w10-uniform", "p0/seed0").startswith(
        "https://mlflow.lab:8443/#/experiments/"
    )
    assert mlflow_run_url(rec, "world-w10-uniform", "p9/seed0") is None
    # running again replaces the records instead of duplicating them
    tracking.log_benchmark([vdir], tmp_path / "results/primitives/prompts.json", tmp_path / "mlflow.json")
    exp = client.get_experiment_by_name("primitives")
    assert len(client.search_runs([exp.experiment_id], "tags.kind = 'object'")) == 2


def test_a_store_creation_that_dies_leaves_nothing_behind(tmp_path, monkeypatch):
    """A process killed while creating the store used to leave it unusable; now the store appears only complete."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real = tracking.new_client

    def dying(u):
        client = real(u)
        client.search_experiments()  # the migrations ran on the temp file ...
        raise KeyboardInterrupt  # ... and the process dies before the rename

    monkeypatch.setattr(tracking, "new_client", dying)
    with pytest.raises(KeyboardInterrupt):
        tracking.ensure_store(uri)
    assert not (tmp_path / "mlflow.db").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "mlflow.db.lock"]
    monkeypatch.setattr(tracking, "new_client", real)
    tracking.ensure_store(uri)
    assert tracking.new_client(uri).search_experiments()  # usable: the Default experiment exists


def test_jobs_do_not_open_a_sqlite_store(tmp_path, monkeypatch):
    """Training logs live only to a server; with SQLite it must not touch the store (and never fails training)."""
    cfg = cfgmod.from_dict({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    out = tmp_path / "results/b/v/p/seed0"
    out.mkdir(parents=True)
    (out / tracking.LIVE_RECORD).write_text('{"run_id": "stale"}')
    with live_logging.live_training(cfg, "p", "text", 0, out) as hook:
        assert hook is None
    assert not (tmp_path / "mlflow.db").exists()
    assert not (out / tracking.LIVE_RECORD).exists()


def test_an_unreachable_server_never_fails_training(tmp_path):
    cfg = cfgmod.from_dict({"tracking": {"uri": "http://127.0.0.1:9"}})
    out = tmp_path / "results/b/v/p/seed0"
    out.mkdir(parents=True)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        with pytest.warns(UserWarning, match="live MLflow logging to http://127.0.0.1:9 disabled"):
            with live_logging.live_training(cfg, "p", "text", 0, out) as hook:
                assert hook is None
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def test_two_clones_sharing_a_store_keep_each_others_runs(tmp_path):
    """Two checkouts track variants of the same name into one store: each replaces only its own runs, so after both
    have logged (twice each) both sets are there, and a re-log leaves one set a clone."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "shared.db"
    clones = []
    for name in ("clone-a", "clone-b"):
        root = tmp_path / name
        vdir = _fake_results(root)
        cfg = cfgmod.from_dict({"tracking": {"uri": f"sqlite:///{store}"}})
        cfgmod.save_resolved(cfg, vdir / "config.yaml")
        clones.append((root, vdir))
    for _ in range(2):
        for root, vdir in clones:
            tracking.log_benchmark([vdir], root / "results/primitives/prompts.json", root / "mlflow.json")
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("primitives")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    clone_of = [r.data.tags["results_dir"].split("/results/")[0] for r in runs]
    by_dir = {d: clone_of.count(d) for d in clone_of}
    assert by_dir == {str((tmp_path / "clone-a").resolve()): 3, str((tmp_path / "clone-b").resolve()): 3}


def test_credentials_never_reach_an_output(tmp_path):
    """A URI with a password is refused in the config (MLflow takes credentials from its environment variables);
    one arriving through $MLFLOW_TRACKING_URI is written and shown without them."""
    with pytest.raises(cfgmod.ConfigError, match="must not carry a user or password.*MLFLOW_TRACKING_PASSWORD"):
        cfgmod.from_dict({"tracking": {"uri": "http://alice:secret@host:5000"}})
    assert live_logging.redact_uri("http://alice:secret@host:5000/x?y=1") == "http://host:5000/x?y=1"
    assert live_logging.redact_uri("https://token@host/") == "https://host/"
    assert live_logging.redact_uri("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"


def test_a_broken_store_or_record_fails_track_with_one_line(tmp_path, monkeypatch):
    """A file that is not a database where the store should be, or a corrupt metrics.json: `track` stops with one
    located line (no traceback chain); a torn last log line is skipped with a warning."""
    monkeypatch.chdir(tmp_path)
    vdir = _fake_results(tmp_path)
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database" * 100)
    args = ["--variants", str(vdir), "--prompts", str(tmp_path / "results/primitives/prompts.json")]
    args += ["--out", str(tmp_path / "mlflow.json")]
    with pytest.raises(SystemExit, match=r"error: MLflow tracking to sqlite:///.*mlflow.db failed \(.*only `track`"):
        tracking.main(args)


def test_a_torn_log_line_is_skipped_and_a_corrupt_record_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vdir = _fake_results(tmp_path)
    args = ["--variants", str(vdir), "--prompts", str(tmp_path / "results/primitives/prompts.json")]
    args += ["--out", str(tmp_path / "mlflow.json")]
    with open(vdir / "p0/seed0/log.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')
    with pytest.warns(UserWarning, match="log.jsonl:4: not a JSON line; skipped"):
        tracking.main(args)
    (vdir / "p1/seed0/metrics.json").write_text('{"seed": 0, "final_')
    with pytest.raises(SystemExit, match=r"error: .*p1/seed0/metrics.json: not a readable record"):
        tracking.main(args)
