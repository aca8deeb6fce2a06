import yaml

from tests.conftest import run_snakemake


def test_slurm_profile_dry_runs(workdir):
    out = run_snakemake(workdir, "--profile", "profiles/slurm", "-n")
    assert "train" in out.stdout


def test_kubernetes_profile_lints(workdir):
    out = run_snakemake(workdir, "--profile", "profiles/kubernetes", "--lint")
    assert "good condition" in out.stdout + out.stderr


def _weights(workdir) -> str:
    """A preset overlay pointing guidance.model at a local pipeline directory: the workflow checks that the weights
    are there before planning any job (the submitting machine needs no GPU when jobs go to a cluster)."""
    model = workdir / "sd-weights"
    model.mkdir(exist_ok=True)
    (model / "model_index.json").write_text("{}")
    (workdir / "weights.yaml").write_text(f"guidance:\n  model: {model}\n")
    return "weights.yaml"


def _train_resources(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if ln.strip().startswith("resources:") and "mem_mb=32000" in ln]


def test_slurm_requests_gpus_only_for_gpu_priors_and_never_gres(workdir):
    """The plugin treats gpu and gres as exclusive; world training is CPU-only; the local gpu=1 limit must not
    serialise cluster jobs."""
    world = run_snakemake(workdir, "--profile", "profiles/slurm", "-n").stdout
    res = _train_resources(world)
    assert res and all("gpu=0" in r and "gres" not in r for r in res), res
    sd = run_snakemake(
        workdir, "--profile", "profiles/slurm", "-n", "--configfile", "configs/sd21-coco153.yaml", _weights(workdir)
    ).stdout
    res = _train_resources(sd)
    assert res and all("gpu=1" in r and "gres" not in r for r in res), res[:2]
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Job:
        def __init__(self, gpu):
            self.resources = {"gpu": gpu}

    assert set_gres_string(Job(0)) == "" and set_gres_string(Job(1)).strip() == "--gpus=1"
    import yaml

    limits = yaml.safe_load((workdir / "profiles/slurm/config.yaml").read_text())["resources"]
    assert limits == ["gpu=1000"]


def test_kubernetes_profile_sets_the_gpu_manufacturer(workdir):
    import yaml

    prof = yaml.safe_load((workdir / "profiles/kubernetes/config.yaml").read_text())
    assert prof["default-resources"]["gpu_manufacturer"] == "nvidia"
    assert "nvidia_gpu" not in str(prof)


def test_conda_env_pins_equal_pyproject_and_need_no_project_path():
    """`pip: -e ..` broke once Snakemake copied the env file under .snakemake/conda/."""
    import tomllib

    from tests.conftest import ROOT

    env = yaml.safe_load((ROOT / "envs/dreamfusion.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pip == deps
    assert not any(p.startswith(("-e", ".", "/")) for p in pip)


def _job_resources(dry_run: str, rule: str) -> dict:
    """The resources Snakemake resolved for the first job of `rule` in a dry run (as it hands them to an executor)."""
    lines = dry_run.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == f"rule {rule}:")
    line = next(ln for ln in lines[start:] if ln.strip().startswith("resources:"))
    out = {}
    for item in line.split("resources:", 1)[1].split(","):
        key, _, value = item.strip().partition("=")
        out[key] = int(value) if value.isdigit() else value
    return out


def _kubernetes_job(resources: dict):
    """The V1Job the Kubernetes executor plugin builds for a job with these resources (its own run_job; the API
    call is captured instead of sent, and no cluster config is loaded)."""
    import logging
    from types import SimpleNamespace

    from snakemake_executor_plugin_kubernetes import Executor

    sent = []
    ex = Executor.__new__(Executor)
    ex.logger = logging.getLogger("k8s-test")
    ex.run_namespace, ex.namespace, ex.container_image = "run", "default", "example/dreamfusion-lab:latest"
    ex.persistent_volumes, ex.secret_envvars, ex.privileged = [], {}, False
    ex.k8s_cpu_scalar, ex.k8s_service_account_name = 0.95, None
    ex.batchapi = SimpleNamespace(create_namespaced_job=lambda ns, body: sent.append(body))
    ex.format_job_exec = lambda job: "snakemake --target-jobs train:…"
    ex.report_job_submission = lambda info: None
    ex.lock = __import__("threading").Lock()
    job = SimpleNamespace(resources=resources, jobid=1, attempt=1, is_containerized=False)
    ex.run_job(job)
    return sent[0]


def test_kubernetes_job_specs_through_the_plugin(workdir, monkeypatch):
    """The profile's resources, resolved by Snakemake for our rules, turned into pod specs by the plugin itself:
    GPU training gets one NVIDIA GPU and its toleration; world training gets none; memory and ephemeral storage are
    requested as the profile says."""
    monkeypatch.setenv("DREAMFUSION_SUBMIT_ONLY", "1")  # the executor is taken out below: the jobs run elsewhere
    prof = yaml.safe_load((workdir / "profiles/kubernetes/config.yaml").read_text())
    for key in (
        "executor",
        "default-storage-provider",
        "default-storage-prefix",
        "kubernetes-namespace",
        "container-image",
    ):
        prof.pop(key)  # no cluster and no bucket here: resolve the resources only
    (workdir / "profiles/k8s-resources").mkdir()
    (workdir / "profiles/k8s-resources/config.yaml").write_text(yaml.safe_dump(prof))
    sd = _job_resources(
        run_snakemake(
            workdir,
            "--profile",
            "profiles/k8s-resources",
            "-n",
            "--configfile",
            "configs/sd21-coco153.yaml",
            _weights(workdir),
        ).stdout,
        "train",
    )
    world = _job_resources(run_snakemake(workdir, "--profile", "profiles/k8s-resources", "-n").stdout, "train")
    assert sd["gpu"] == 1 and world["gpu"] == 0 and sd["gpu_manufacturer"] == "nvidia"

    gpu_job = _kubernetes_job(sd)
    container = gpu_job.spec.template.spec.containers[0]
    assert container.resources.requests["nvidia.com/gpu"] == "1"
    assert container.resources.requests["memory"] == "32000M"
    assert container.resources.requests["ephemeral-storage"] == "60000M"
    assert any(t.key == "nvidia.com/gpu" for t in gpu_job.spec.template.spec.tolerations)
    assert container.image == "example/dreamfusion-lab:latest"

    cpu_job = _kubernetes_job(world)
    requests = cpu_job.spec.template.spec.containers[0].resources.requests
    assert requests.get("nvidia.com/gpu", "0") == "0"  # the world trains on CPUs: no GPU is requested
    assert requests["memory"] == "32000M" and requests["ephemeral-storage"] == "60000M"


def test_a_gpu_preset_without_cuda_or_weights_stops_before_any_job(workdir):
    """The dry run itself refuses, once, with what is missing and the commands (IF: the licence and the login
    first), instead of planning 306 training jobs that each fail in their log."""
    out = run_snakemake(workdir, "-n", "--configfile", "configs/if-coco153.yaml", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "this machine cannot run the configured variants" in text
    assert "deepfloyd-if needs a CUDA GPU and none is visible here" in text
    assert "accept the licence at https://huggingface.co/DeepFloyd/IF-I-XL-v1.0" in text and "hf auth login" in text
    assert "`hf download DeepFloyd/IF-I-XL-v1.0 --include 'model_index.json'" in text
    assert "Job stats" not in text
    cpu = run_snakemake(
        workdir,
        "-n",
        "--configfile",
        "configs/if-coco153.yaml",
        _weights(workdir),
        "--config",
        "train={'device': 'cpu'}",
    )
    assert "train" in cpu.stdout
