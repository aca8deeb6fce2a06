import json
import logging
from pathlib import Path

import pytest

from pipeline.prompts import PromptFileError, normalize, prepare, prompt_id, read_prompt_file
from tests.conftest import ROOT, run_snakemake


def test_normalisation_matches_dream_fields_rule_on_coco153():
    lines = (ROOT / "prompts/coco153.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 153
    prompts = read_prompt_file(ROOT / "prompts/coco153.txt")
    assert [p.text for p in prompts] == [q.lower().strip(" .,") + "." for q in lines]
    assert [p.raw for p in prompts] == lines
    assert len({p.id for p in prompts}) == 153


def test_coco153_is_verbatim_copy():
    shared = ROOT.parent / "shared/data/coco153_raw.txt"
    if shared.exists():
        assert (ROOT / "prompts/coco153.txt").read_bytes() == shared.read_bytes()


def test_ids_are_stable_and_safe():
    assert prompt_id("a red cube.") == prompt_id("a red cube.")
    assert prompt_id("a red cube.") != prompt_id("a red cube!.")
    for text in ["../../etc/passwd.", "/abs/path.", "..", "a\\b/c.", "日本語のプロンプト."]:
        pid = prompt_id(text)
        assert "/" not in pid and "\\" not in pid and ".." not in pid and pid.strip() == pid
        assert Path("results", pid).resolve().parent == Path("results").resolve()
    assert normalize(" A Red Cube. ") == "a red cube."


def test_long_prompt_warns(tmp_path, caplog):
    f = tmp_path / "b.txt"
    f.write_text("a " + "very " * 100 + "long caption\n")
    with caplog.at_level(logging.WARNING):
        read_prompt_file(f)
    assert "tokens, over the text encoder's 77" in caplog.text


def test_prepare_writes_json_and_selects(tmp_path):
    out = tmp_path / "out" / "prompts.json"
    doc = prepare(ROOT / "prompts/primitives.txt", out, ["a red sphere", "A blue cube."])
    on_disk = json.loads(out.read_text())
    assert on_disk == doc
    assert len(doc["retrieval_set"]) == 36
    assert [doc["prompts"][i]["id"] for i in range(36) if doc["prompts"][i]["id"] in doc["selected"]] == doc["selected"]
    assert len(doc["selected"]) == 2
    assert not list(out.parent.glob("*.tmp"))
    with pytest.raises(PromptFileError, match="prompts.select names 'a pink cube'"):
        prepare(ROOT / "prompts/primitives.txt", out, ["a pink cube"])


def test_snakefile_lints_dry_runs_and_prepares(workdir):
    run_snakemake(workdir, "--lint")
    dry = run_snakemake(workdir, "-n", "results/primitives/prompts.json")
    assert "prepare" in dry.stdout
    run_snakemake(workdir, "results/primitives/prompts.json")
    doc = json.loads((workdir / "results/primitives/prompts.json").read_text())
    assert len(doc["selected"]) == 8


def test_snakefile_rejects_bad_config_before_jobs(workdir):
    (workdir / "bad.yaml").write_text("guidance:\n  scale: -1\n")
    proc = run_snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert "guidance.scale must be >= 0.0" in proc.stdout + proc.stderr


def test_comments_are_skipped_and_line_numbers_stay_true(tmp_path):
    f = tmp_path / "bench.txt"
    f.write_text("# the world's captions\na red cube\n\n  # indented comment\na blue sphere\r\n")
    prompts = read_prompt_file(f)
    assert [(p.text, p.line) for p in prompts] == [("a red cube.", 2), ("a blue sphere.", 5)]
