# DreamFusion lab workflow: prepare → train → mesh → views → evaluate → report.
# Config: params.yaml (validated by pipeline.config before any job starts); presets: --configfile configs/<x>.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "rules/common.smk"
include: "rules/prepare.smk"


rule all:
    input:
        f"{RESULTS}/prompts.json",
