from tests.conftest import run_snakemake


def test_slurm_profile_dry_runs(workdir):
    out = run_snakemake(workdir, "--profile", "profiles/slurm", "-n")
    assert "train" in out.stdout


def test_kubernetes_profile_lints(workdir):
    out = run_snakemake(workdir, "--profile", "profiles/kubernetes", "--lint")
    assert "good condition" in out.stdout + out.stderr
