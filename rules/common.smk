# Shared state for every rule: the validated config, the variant grid and the prompt set.
import os
import sys
import time

sys.path.insert(0, workflow.basedir)

from pipeline import config as cfgmod  # noqa: E402
from pipeline import prompts as promptmod  # noqa: E402
from pipeline import yamlio  # noqa: E402
from pipeline.provenance import module_sources  # noqa: E402
from snakemake.utils import validate  # noqa: E402

try:
    CFG = cfgmod.from_layers(  # every problem at once, each named with the file that brought it in
        [(f, yamlio.load(f)) for f in ["params.yaml", *workflow.overwrite_configfiles]], config
    )
    VARIANTS = cfgmod.variants(CFG)
    for _resolved in VARIANTS.values():  # the same rules as JSON schema (editors use it): generated from pipeline/config.py
        validate(_resolved.to_dict(), os.path.join(workflow.basedir, "schemas/params.schema.json"))
    BENCH = CFG.prompts.benchmark
    PROMPT_FILE = f"prompts/{BENCH}.txt"
    PROMPTS = promptmod.select(
        promptmod.read_prompt_file(PROMPT_FILE, CFG.prompts.max_tokens), CFG.prompts.select
    )
except (cfgmod.ConfigError, promptmod.PromptFileError) as exc:
    raise WorkflowError(str(exc)) from None


def _preflight():
    """GPU presets: stop before any job (dry runs included) when this machine cannot run them."""
    from pipeline.guidance import needs_gpu

    if not any(needs_gpu(v.guidance.name) and v.train.device != "cpu" for v in VARIANTS.values()):
        return
    from pipeline import preflight

    local = workflow.is_main_process and not preflight.cluster_executor(sys.argv, os.environ)
    found = preflight.problems(VARIANTS.values(), check_cuda=local)
    if found:
        raise WorkflowError("this machine cannot run the configured variants:\n- " + "\n- ".join(found))


_preflight()

RESULTS = f"results/{BENCH}"
LOG_DIRS = [f"{RESULTS}/logs", "results/world/logs"]  # every job's log file is under one of these
RUN_STARTED = time.time()  # job logs older than this are from earlier runs
STUDY = CFG.study or BENCH
REPORT = f"reports/{STUDY}"  # outside results/ so DVC metrics do not overlap the results output
PROMPT_IDS = [p.id for p in PROMPTS]
SEEDS = CFG.seeds

wildcard_constraints:
    variant=r"[A-Za-z0-9._-]+",
    pid=r"[a-z0-9-]+",
    seed=r"\d+",

OBJ = f"{RESULTS}/{{variant}}/{{pid}}/seed{{seed}}"
IS_WORLD = BENCH == "primitives"


def variant_cfg(wildcards):
    return VARIANTS[wildcards.variant]


def bank_file(variant):
    """The world bank a variant's closed-form prior needs (none for other guidance)."""
    from pipeline.world.bank_id import bank_digest

    cfg = VARIANTS[variant]
    return [f"results/world/bank-{bank_digest(cfg)}.safetensors"] if cfg.guidance.name == "world" else []


def guidance_files(variant):
    """The record of a local diffusers guidance directory a variant trains with (`train.json`, else
    `model_index.json`): retraining the bundled learned prior re-runs its objects. (The closed-form prior's input is
    its bank, `bank_file`.)"""
    from pipeline.guidance import WORLD_UNET_DIR

    cfg = VARIANTS[variant]
    if cfg.guidance.name == "world":
        return []
    model = cfg.guidance.model or (WORLD_UNET_DIR if cfg.guidance.name == "world-unet" else "")
    for name in ("train.json", "model_index.json"):
        if model and os.path.isfile(os.path.join(model, name)):
            return [os.path.join(model, name)]
    return []


def train_gpus(wildcards):
    """1 GPU for a training job whose guidance model needs one (the registry's `needs_gpu`), else 0."""
    from pipeline.guidance import needs_gpu

    cfg = VARIANTS[wildcards.variant]
    cpu = cfg.train.device == "cpu" or (cfg.train.device == "auto" and not needs_gpu(cfg.guidance.name))
    return 0 if cpu else 1


def train_threads(wildcards):
    """CPU training: one thread per job (two 1-thread jobs run ~2x the steps/s of one 2-thread job on 2 cores,
    measured in benchmarks/RESULTS.md); GPU jobs keep 2 threads for data work."""
    return 2 if train_gpus(wildcards) else 1


def job_size():
    """train.objects_per_job, with 0 (auto) resolved: the closed-form world prior gives the same objects in any
    grouping, so its objects split evenly over the cores; any other prior trains one object a job."""
    if CFG.train.objects_per_job:
        return CFG.train.objects_per_job
    from pipeline.preflight import cluster_executor

    cores = workflow.resource_settings.cores
    if any(v.guidance.name != "world" for v in VARIANTS.values()) or not cores:
        return 1
    # cluster jobs re-read this file with their own --cores: there, and in the process submitting them, one a job
    if not workflow.is_main_process or cluster_executor(sys.argv, os.environ):
        return 1
    return max(1, -(-len(PROMPT_IDS) * len(SEEDS) // cores))


JOB_SIZE = job_size()
_PAIRS = [(p, s) for p in PROMPT_IDS for s in SEEDS]
OBJECT_JOBS = [_PAIRS[i : i + JOB_SIZE] for i in range(0, len(_PAIRS), JOB_SIZE)]
"""(prompt id, seed) groups of JOB_SIZE, each trained by one job (rules/train.smk)."""


def objects(variant, name):
    return expand(f"{RESULTS}/{variant}/{{pid}}/seed{{seed}}/{name}", pid=PROMPT_IDS, seed=SEEDS)


def clip_files(variant):
    """Local CLIP checkpoints a variant is evaluated with (a change re-runs its evaluation)."""
    return [m for m in VARIANTS[variant].evaluate.clip_models if os.path.splitext(m)[1] in (".pt", ".pth")]


def code(*modules):
    """The source files `python -m <module>` runs: the module and every pipeline module it imports, transitively
    (lazy imports inside functions included). Rules list them as inputs, so editing the code a rule runs re-runs it
    (Snakemake cannot see into `python -m`)."""
    files = set().union(*(module_sources(m, workflow.basedir) for m in modules))
    return sorted(os.path.relpath(os.path.join(workflow.basedir, f)) for f in files)


def stage(module):
    """The shell command of a stage: `python -m <module>` with its math libraries held to the job's threads (so
    parallel jobs do not oversubscribe the cores)."""
    return f"OMP_NUM_THREADS={{threads}} python -m {module}"


TRAIN_CODE = code("pipeline.train")


def train_inputs(wildcards):
    """What a training job reads: its variant's config, the prompts, the world bank or the guidance model's record,
    and the code `python -m pipeline.train` runs."""
    return {
        "config": f"{RESULTS}/{wildcards.variant}/config.yaml",
        "prompts": f"{RESULTS}/prompts.json",
        "bank": bank_file(wildcards.variant),
        "guidance": guidance_files(wildcards.variant),
        "code": TRAIN_CODE,
    }


def final_model(wildcards):
    """The object later stages read: the second stage's model when the variant refines, else the first's."""
    name = "refined/model.safetensors" if VARIANTS[wildcards.variant].refine.enabled else "model.safetensors"
    return os.path.join(OBJ.format(**wildcards), name)


def first_stage(wildcards):
    """The first stage's model, for geometry's side-by-side scores, when the variant refines."""
    refines = VARIANTS[wildcards.variant].refine.enabled
    return [os.path.join(OBJ.format(**wildcards), "model.safetensors")] if refines else []


def training_objects():
    """{name: (folder, steps)} of every object this run trains, for the console's progress block
    (pipeline/progress.py); names carry the variant when there are several."""
    several = len(VARIANTS) > 1
    return {
        (f"{v}/" if several else "") + f"{p}/seed{s}": (f"{RESULTS}/{v}/{p}/seed{s}", VARIANTS[v].train.steps)
        for v in VARIANTS
        for p in PROMPT_IDS
        for s in SEEDS
    }
