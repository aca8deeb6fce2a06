rule configure:
    """Write the resolved config of one variant (re-written only when its values change)."""
    output:
        f"{RESULTS}/{{variant}}/config.yaml",
    params:
        values=lambda w: VARIANTS[w.variant].to_dict(),
    log:
        f"{RESULTS}/logs/configure/{{variant}}.log",
    run:
        cfgmod.save_resolved(VARIANTS[wildcards.variant], output[0])


rule train:
    """SDS-NeRF optimisation of one (variant, prompt, seed); resumes from its checkpoint after a crash."""
    input:
        config=f"{RESULTS}/{{variant}}/config.yaml",
        prompts=f"{RESULTS}/prompts.json",
        bank=lambda w: bank_file(w.variant),
        guidance=lambda w: guidance_files(w.variant),
        code=code("pipeline.train"),
    output:
        model=f"{OBJ}/model.safetensors",
        metrics=f"{OBJ}/metrics.json",
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        bank=lambda w, input: ["--world-bank", input.bank] if input.bank else [],
    log:
        f"{RESULTS}/logs/train/{{variant}}/{{pid}}-seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{variant}}/{{pid}}-seed{{seed}}.tsv"
    threads: train_threads
    resources:
        gpu=train_gpus,
        mem_mb=4000,
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.train") + " --params {input.config:q} --prompts {input.prompts:q} --prompt-id {wildcards.pid:q}"
        " --seed {wildcards.seed:q} --out {params.out:q} {params.bank:q} > {log:q} 2>&1"
