# Shared state for every rule: the validated config, the variant grid and the prompt set.
import sys

sys.path.insert(0, workflow.basedir)

from pipeline import config as cfgmod  # noqa: E402
from pipeline import prompts as promptmod  # noqa: E402

try:
    CFG = cfgmod.from_dict(config, "params.yaml (+ --config/--configfile overrides)")
    VARIANTS = cfgmod.variants(CFG)
    BENCH = CFG.prompts.benchmark
    PROMPT_FILE = f"prompts/{BENCH}.txt"
    PROMPTS = promptmod.select(
        promptmod.read_prompt_file(PROMPT_FILE, CFG.prompts.max_tokens), CFG.prompts.select
    )
except (cfgmod.ConfigError, promptmod.PromptFileError) as exc:
    raise WorkflowError(str(exc)) from None

RESULTS = f"results/{BENCH}"
PROMPT_IDS = [p.id for p in PROMPTS]
SEEDS = CFG.seeds
