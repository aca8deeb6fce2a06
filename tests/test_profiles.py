import yaml

from tests.conftest import run_snakemake


def test_slurm_profile_dry_runs(workdir):
    out = run_snakemake(workdir, "--profile", "profiles/slurm", "-n")
    assert "train" in out.stdout


def test_kubernetes_profile_lints(workdir):
    out = run_snakemake(workdir, "--profile", "profiles/kubernetes", "--lint")
    assert "good condition" in out.stdout + out.stderr


def _train_resources(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if ln.strip().startswith("resources:") and "mem_mb=32000" in ln]


def test_slurm_requests_gpus_only_for_gpu_priors_and_never_gres(workdir):
    """The plugin treats gpu and gres as exclusive; world training is CPU-only; the local gpu=1 limit must not
    serialise cluster jobs."""
    world = run_snakemake(workdir, "--profile", "profiles/slurm", "-n").stdout
    res = _train_resources(world)
    assert res and all("gpu=0" in r and "gres" not in r for r in res), res
    sd = run_snakemake(workdir, "--profile", "profiles/slurm", "-n", "--configfile", "configs/sd21-coco153.yaml").stdout
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
