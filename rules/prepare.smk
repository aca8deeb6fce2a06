rule prepare:
    """Validate and normalise the prompt set; write prompts.json (ids, captions, retrieval set)."""
    input:
        prompts=PROMPT_FILE,
        code=code("pipeline.prompts"),
    output:
        f"{RESULTS}/prompts.json",
    params:
        select=CFG.prompts.select,
        max_tokens=CFG.prompts.max_tokens,
    log:
        f"{RESULTS}/logs/prepare.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        "python -m pipeline.prompts {input.prompts:q} {output:q} --max-tokens {params.max_tokens:q}"
        " --select {params.select:q} > {log:q} 2>&1"
