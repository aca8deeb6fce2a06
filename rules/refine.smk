rule refine:
    """The second, sharp stage of one object (pipeline/refine.py): the first stage's density as a signed distance,
    trained on by SDS; resumes from its checkpoint after a crash. Runs for variants with refine.enabled."""
    input:
        unpack(train_inputs),
        model=f"{OBJ}/model.safetensors",
        refine_code=code("pipeline.refine"),
    output:
        model=f"{OBJ}/refined/model.safetensors",
        metrics=f"{OBJ}/refined/metrics.json",
    params:
        out=lambda w, output: os.path.dirname(output.model),
        bank=lambda w, input: ["--world-bank", input.bank] if input.bank else [],
    log:
        f"{RESULTS}/logs/refine/{{variant}}/{{pid}}-seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/refine/{{variant}}/{{pid}}-seed{{seed}}.tsv"
    threads: train_threads
    resources:
        gpu=train_gpus,
        mem_mb=4000,
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.refine") + " --params {input.config:q} --prompts {input.prompts:q} --model {input.model:q}"
        " --out {params.out:q} {params.bank:q} > {log:q} 2>&1"
