rule configure:
    """Write the resolved config of one variant (re-written only when its values change)."""
    output:
        f"{RESULTS}/{{variant}}/config.yaml",
    params:
        values=lambda w: VARIANTS[w.variant].resolved(),
    log:
        f"{RESULTS}/logs/configure/{{variant}}.log",
    run:
        cfgmod.save_resolved(VARIANTS[wildcards.variant], output[0])


if JOB_SIZE == 1:

    rule train:
        """SDS-NeRF optimisation of one (variant, prompt, seed); resumes from its checkpoint after a crash."""
        input:
            unpack(train_inputs),
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
            stage("pipeline.train") + " --params {input.config:q} --prompts {input.prompts:q} --prompt-id"
            " {wildcards.pid:q} --seed {wildcards.seed:q} --out {params.out:q} {params.bank:q} > {log:q} 2>&1"

else:
    # train.objects_per_job > 1: one rule per group of objects (the same groups in every variant), whose outputs are
    # its objects' files in the usual layout; one process trains them together (pipeline/train.py).
    for _job, _objects in enumerate(OBJECT_JOBS):

        rule:
            name:
                f"train_job{_job}"
            input:
                unpack(train_inputs),
            output:
                [f"{RESULTS}/{{variant}}/{p}/seed{s}/{f}" for p, s in _objects for f in ("model.safetensors", "metrics.json")],
            params:
                pids=[p for p, _ in _objects],
                seeds=[s for _, s in _objects],
                outs=lambda w, _objects=_objects: [f"{RESULTS}/{w.variant}/{p}/seed{s}" for p, s in _objects],
                bank=lambda w, input: ["--world-bank", input.bank] if input.bank else [],
            log:
                f"{RESULTS}/logs/train/{{variant}}/job{_job}.log",
            benchmark:
                f"{RESULTS}/benchmarks/train/{{variant}}/job{_job}.tsv"
            threads: train_threads
            resources:
                gpu=train_gpus,
                mem_mb=3000 + 1000 * len(_objects),
            conda:
                "../envs/dreamfusion.yaml"
            shell:
                stage("pipeline.train") + " --params {input.config:q} --prompts {input.prompts:q} --prompt-id"
                " {params.pids:q} --seed {params.seeds:q} --out {params.outs:q} {params.bank:q} > {log:q} 2>&1"
