# DreamFusion lab workflow: prepare → train → mesh → views → evaluate → report.
# Config: params.yaml (validated by pipeline.config before any job starts); presets: --configfile configs/<x>.yaml
from snakemake.utils import min_version

min_version("9.0")


include: "rules/yaml_check.smk"


configfile: "params.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/prepare.smk"
include: "rules/train.smk"
include: "rules/refine.smk"
include: "rules/views.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/world.smk"


localrules:
    track,
    publish,


onstart:
    # each training object's step, speed and ETA on the console (LAB_PROGRESS_EVERY seconds; 0 = off)
    if workflow.is_main_process:
        from snakemake.logging import logger
        from pipeline import progress

        progress.start(training_objects(), logger)


onerror:
    # each failed job's own error in one line, from the job logs this run wrote
    if workflow.is_main_process:
        from snakemake.logging import logger
        from pipeline import progress

        for line in progress.failures(LOG_DIRS, RUN_STARTED):
            logger.error(line)


rule all:
    input:
        f"{REPORT}/index.html",
        [f"{REPORT}/mlflow.json"] if CFG.tracking.enabled else [],
        f"{REPORT}/metrics.json",
        [f"{REPORT}/findings.md"] if len(VARIANTS) > 1 else [],
        [f for v in VARIANTS for f in objects(v, "mesh.glb")],
