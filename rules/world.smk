# The bundled offline world: the closed-form prior's image bank (rendered per config by every run that uses it), and
# the committed weights of the learned prior and the evaluator, which are not part of `all`; regenerate those with
#   snakemake bundled_models --forceall --cores 2      (~2.5 h on 2 CPU cores)
# Their inputs are ancient(): the weights are committed, and a fresh clone checks models/ out before params.yaml,
# so by modification time every clone would look outdated and retrain them (and delete the committed files).
# They run only when their outputs are missing or when forced.


rule world_bank:
    """Render the bundled world's image bank: the data of the closed-form prior (deterministic from its seed)."""
    input:
        config=lambda w: f"{RESULTS}/{next(v for v in VARIANTS if bank_file(v) and bank_file(v)[0].endswith(w.digest + '.safetensors'))}/config.yaml",
    output:
        "results/world/bank-{digest}.safetensors",
    log:
        "results/world/logs/bank-{digest}.log",
    threads: 2
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.world.prior") + " --params {input.config:q} --out {output:q} > {log:q} 2>&1"


rule train_evaluator:
    """The tiny CLIP evaluator (clip-anytorch state dict), trained on held-out world renders."""
    input:
        ancient("params.yaml"),
    output:
        model="models/world-clip/world-clip.pt",
        record="models/world-clip/world-clip.train.json",
    log:
        "results/world/logs/train_evaluator.log",
    threads: 2
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.world.evaluator --params {input:q} --out {output.model:q} > {log:q} 2>&1"


rule train_world_unet:
    """The learned prior (diffusers pipeline directory), trained on the world bank for a fixed number of steps
    (checkpointed: a killed job resumes where it stopped)."""
    input:
        ancient("params.yaml"),
    output:
        index="models/world-unet/model_index.json",
        record="models/world-unet/train.json",
    params:
        out=lambda w, output: os.path.dirname(output.record),
        steps=5000,
    log:
        "results/world/logs/train_world_unet.log",
    threads: 2
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.world.unet --params {input:q} --out {params.out:q} --steps {params.steps:q} > {log:q} 2>&1"


rule train_world_ldm:
    """The latent prior in the Stable Diffusion layout (VAE, then the latent U-Net; checkpointed: a killed job resumes)."""
    input:
        ancient("params.yaml"),
    output:
        index="models/world-ldm/model_index.json",
        record="models/world-ldm/train.json",
    params:
        out=lambda w, output: os.path.dirname(output.record),
    log:
        "results/world/logs/train_world_ldm.log",
    threads: 2
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.world.ldm --params {input:q} --out {params.out:q} > {log:q} 2>&1"


rule measure_world_ldm:
    """The card numbers of the latent prior: VAE reconstruction, DDIM samples and 2D SDS, by the world evaluator."""
    input:
        params=ancient("params.yaml"),
        clip=ancient("models/world-clip/world-clip.pt"),
        ldm=ancient(rules.train_world_ldm.output.record),
    output:
        "models/world-ldm/quality.json",
    log:
        "results/world/logs/measure_world_ldm.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.world.measure --params {input.params:q} --clip {input.clip:q} --ldm $(dirname {input.ldm:q}) > {log:q} 2>&1"


rule measure_world:
    """The quality bars of the model cards (evaluator, prior samples, 2D SDS)."""
    input:
        params=ancient("params.yaml"),
        clip=ancient("models/world-clip/world-clip.pt"),
        unet=ancient(rules.train_world_unet.output.record),
    output:
        world="models/world-clip/quality.json",
        unet="models/world-unet/quality.json",
    log:
        "results/world/logs/measure_world.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.world.measure --params {input.params:q} --clip {input.clip:q} --out {output.world:q} --unet $(dirname {input.unet:q}) > {log:q} 2>&1"


rule bundled_models:
    input:
        rules.train_evaluator.output,
        rules.train_world_unet.output,
        rules.measure_world.output,
        rules.train_world_ldm.output,
        rules.measure_world_ldm.output,
