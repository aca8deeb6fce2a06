rule evaluate:
    """CLIP R-precision of one variant over all its prompts and seeds."""
    input:
        config=f"{RESULTS}/{{variant}}/config.yaml",
        prompts=f"{RESULTS}/prompts.json",
        views=lambda w: objects(w.variant, "views.npz"),
        geometry=lambda w: objects(w.variant, "geometry.json") if IS_WORLD else [],
        clip=lambda w: clip_files(w.variant),
        code=code("pipeline.evaluate"),
    output:
        json=f"{RESULTS}/{{variant}}/rprecision.json",
        csv=f"{RESULTS}/{{variant}}/rprecision.csv",
    params:
        geometry=lambda w, input: ["--geometry", *input.geometry] if input.geometry else [],
    log:
        f"{RESULTS}/logs/evaluate/{{variant}}.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.evaluate") + " --params {input.config:q} --prompts {input.prompts:q} --views {input.views:q}"
        " {params.geometry:q} --out {output.json:q} > {log:q} 2>&1"


rule ground_truth:
    """The bundled world's ceiling: ground-truth renders through the same views and evaluator."""
    input:
        config=f"{RESULTS}/{next(iter(VARIANTS))}/config.yaml",
        prompts=f"{RESULTS}/prompts.json",
        clip=clip_files(next(iter(VARIANTS))),
        code=code("pipeline.evaluate"),
    output:
        f"{RESULTS}/ground_truth.json",
    log:
        f"{RESULTS}/logs/ground_truth.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.evaluate") + " --params {input.config:q} --prompts {input.prompts:q} --ground-truth"
        " --out {output:q} > {log:q} 2>&1"
