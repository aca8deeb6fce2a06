"""Every command the README prints is run as printed, in the cheapest form that still checks it: Snakemake commands
as dry runs on a fresh copy of the workflow, other tools' commands against their own `--help` (every flag the README
uses must exist). The README cannot drift from the code (a renamed flag, a preset or profile that is gone, a stage
that no longer parses its arguments) without this test failing."""

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_snakemake

README = (ROOT / "README.md").read_text(encoding="utf-8")
TOOLS = ("snakemake", "python -m pipeline.", "dvc", "mlflow", "hf")


def _commands() -> list[str]:
    """Commands in the README's shell blocks and inline code, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            found += [part.strip() for part in re.split(r" && | ; ", line) if part.strip()]
    found += [" ".join(c.split()) for c in re.findall(r"`((?:snakemake|python -m pipeline\.)[^`]*)`", README)]
    expanded = []
    for c in found:  # shell brace expansion: python -m pipeline.{a,b} --help
        brace = re.search(r"\{([^{}]*,[^{}]*)\}", c)
        expanded += [c[: brace.start()] + alt + c[brace.end() :] for alt in brace.group(1).split(",")] if brace else [c]
    return sorted({c for c in expanded if c.startswith(TOOLS)})


COMMANDS = _commands()


def test_the_readme_shows_the_main_commands_in_its_first_screen():
    head = "\n".join(README.splitlines()[:80])
    for command in ("pip install -e '.[dev]'", "snakemake --cores all\n", "pytest -q"):
        assert command in head, command
    assert len(README.splitlines()) <= 250


def test_every_command_is_checked():
    assert len(COMMANDS) >= 12, COMMANDS
    assert any(c.startswith("snakemake --profile profiles/slurm") for c in COMMANDS)


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """One fresh copy of the workflow for every dry run (a dry run writes nothing but Snakemake's metadata)."""
    from tests.conftest import copy_workflow

    return copy_workflow(tmp_path_factory.mktemp("readme"))


GPU_PRESETS = ("configs/sd21-coco153.yaml", "configs/if-coco153.yaml")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("snakemake")])
def test_snakemake_commands_plan_on_a_fresh_copy(fresh_copy, command):
    args = shlex.split(command)[1:]
    if "publish" in args:
        pytest.skip("publish needs a study's finished report; tests/test_workflow.py runs it")
    if "profiles/kubernetes" in args:
        pytest.skip("needs a bucket and a cluster; tests/test_profiles.py resolves its pod specs")
    out = run_snakemake(fresh_copy, *args, "-n", "--quiet", "rules", check=False)
    text = out.stdout + out.stderr
    if any(p in args for p in GPU_PRESETS) and out.returncode != 0:
        assert "this machine cannot run the configured variants" in text, text[-3000:]  # no GPU or weights here
        return
    assert out.returncode == 0, text[-3000:]


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-")]


@pytest.mark.parametrize("command", [c for c in COMMANDS if not c.startswith("snakemake")])
def test_other_commands_use_flags_that_exist(command):
    args = shlex.split(command)
    if args[0] == "python":
        cmd, rest = [sys.executable, "-m", args[2]], args[3:]
    else:
        two_words = (["exp", "run"], ["exp", "show"], ["metrics", "diff"], ["remote", "add"], ["auth", "login"])
        sub = args[1:3] if args[1:3] in two_words else [a for a in args[1:] if not a.startswith("-")][:1]
        cmd, rest = [str(ROOT / ".venv/bin" / args[0]) if (ROOT / ".venv/bin" / args[0]).exists() else args[0]], []
        cmd += sub
        rest = args[1 + len(sub) :]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    for flag in _flags(rest):
        assert flag in text, f"{command}: {flag} is not an option of {' '.join(cmd[-2:])}"
