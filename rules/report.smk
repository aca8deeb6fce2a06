# Across objects and variants: the report, MLflow tracking, a study's findings and their publication.


rule report:
    """Table 1 side by side, variant comparison with bootstrap CIs, plots, gallery, index.html, DVC metrics."""
    input:
        evals=expand(f"{RESULTS}/{{variant}}/rprecision.json", variant=VARIANTS),
        gt=[f"{RESULTS}/ground_truth.json"] if IS_WORLD else [],
        media=[f for v in VARIANTS for f in objects(v, "sheet.png") + objects(v, "turntable.mp4")],
        mlflow=f"{REPORT}/mlflow.json",
        code=code("pipeline.report"),
    output:
        table=report(f"{REPORT}/table.md", caption="../report/table.rst", category="Report"),
        csv=f"{REPORT}/table.csv",
        metrics=f"{REPORT}/metrics.json",
        plot=f"{REPORT}/rprecision.csv",
        variants=f"{REPORT}/variants.csv",
        html=report(f"{REPORT}/index.html", caption="../report/index.rst", category="Report"),
        comparison=report(f"{REPORT}/comparison.md", caption="../report/comparison.rst", category="Report"),
        gallery=report(f"{REPORT}/gallery.png", caption="../report/gallery.rst", category="Objects"),
        plot_png=report(
            f"{REPORT}/rprecision_vs_scale.png", caption="../report/rprecision_plot.rst", category="Report"
        ),
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        gt=lambda w, input: ["--ground-truth", input.gt] if input.gt else [],
        bootstrap=CFG.evaluate.bootstrap,
    log:
        f"{RESULTS}/logs/report-{STUDY}.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.report") + " --evals {input.evals:q} {params.gt:q} --media {input.media:q}"
        " --bootstrap {params.bootstrap:q} --mlflow {input.mlflow:q} --out-dir {params.out:q} > {log:q} 2>&1"


rule track:
    """Log every result file of the benchmark to MLflow, in one local process before the report, whose object cards
    link to the runs (jobs never open the store: see pipeline/tracking.py for why)."""
    input:
        configs=expand(f"{RESULTS}/{{variant}}/config.yaml", variant=VARIANTS),
        prompts=f"{RESULTS}/prompts.json",
        evals=expand(f"{RESULTS}/{{variant}}/rprecision.json", variant=VARIANTS),
        media=[f for v in VARIANTS for f in objects(v, "mesh.glb") + objects(v, "views.json")],
        geometry=[f for v in VARIANTS for f in objects(v, "geometry.json")] if IS_WORLD else [],
        code=code("pipeline.tracking"),
    output:
        f"{REPORT}/mlflow.json",
    params:
        variants=lambda w, input: [os.path.dirname(c) for c in input.configs],
    log:
        f"{RESULTS}/logs/track-{STUDY}.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.tracking --variants {params.variants:q} --prompts {input.prompts:q} --out {output:q} > {log:q} 2>&1"


rule findings:
    """What the study shows: every variant paired against the first on every metric (BCa intervals, effect sizes,
    Holm-corrected permutation tests, the minimum detectable difference), a paragraph per metric and a plot."""
    input:
        evals=expand(f"{RESULTS}/{{variant}}/rprecision.json", variant=VARIANTS),
        configs=expand(f"{RESULTS}/{{variant}}/config.yaml", variant=VARIANTS),
        code=code("pipeline.findings"),
    output:
        md=report(f"{REPORT}/findings.md", caption="../report/findings.rst", category="Findings"),
        csv=f"{REPORT}/findings.csv",
        png=report(f"{REPORT}/findings.png", caption="../report/findings_plot.rst", category="Findings"),
        summary=f"{REPORT}/summary.md",
    params:
        out=lambda w, output: os.path.dirname(output.md),
        study=STUDY,
        bootstrap=CFG.evaluate.bootstrap,
    log:
        f"{RESULTS}/logs/findings-{STUDY}.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.findings --study {params.study:q} --evals {input.evals:q} --configs {input.configs:q}"
        " --bootstrap {params.bootstrap:q} --out-dir {params.out:q} > {log:q} 2>&1"


rule publish:
    """Copy the study's findings page, plot and summary to docs/findings/ and rebuild its index, docs/findings/README.md
    (`snakemake --cores all publish --configfile configs/<sweep>.yaml`; not part of `all`)."""
    input:
        md=f"{REPORT}/findings.md",
        png=f"{REPORT}/findings.png",
        summary=f"{REPORT}/summary.md",
        code=code("pipeline.findings"),
    output:
        md=f"docs/findings/{STUDY}.md",
        png=f"docs/findings/{STUDY}.png",
        summary=f"docs/findings/{STUDY}.summary.md",
        index="docs/findings/README.md",
    params:
        src=lambda w, input: os.path.dirname(input.md),
        dest=lambda w, output: os.path.dirname(output.md),
        study=STUDY,
    log:
        f"{RESULTS}/logs/publish-{STUDY}.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.findings --study {params.study:q} --out-dir {params.src:q} --publish-to {params.dest:q}"
        " > {log:q} 2>&1"
