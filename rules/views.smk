rule mesh:
    """Marching cubes + open3d clean-up → mesh.ply (vertex colours), mesh.glb and mesh.obj/.mtl + texture.png (UV
    texture baked from the field's albedo), mesh.json (an empty field is recorded, not fatal)."""
    input:
        model=final_model,
        code=code("pipeline.mesh"),
    output:
        ply=f"{OBJ}/mesh.ply",
        glb=f"{OBJ}/mesh.glb",
        stats=f"{OBJ}/mesh.json",
    params:
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/mesh/{{variant}}/{{pid}}-seed{{seed}}.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.mesh") + " --model {input.model:q} --out-dir {params.out:q} > {log:q} 2>&1"


rule views:
    """Evaluation views, the exported mesh's agreement with the field (silhouette, colour), turntable (mp4, gif) and
    contact sheet."""
    input:
        model=final_model,
        mesh=f"{OBJ}/mesh.ply",
        glb=f"{OBJ}/mesh.glb",
        code=code("pipeline.views"),
    output:
        npz=f"{OBJ}/views.npz",
        info=f"{OBJ}/views.json",
        sheet=f"{OBJ}/sheet.png",
        mp4=f"{OBJ}/turntable.mp4",
        gif=f"{OBJ}/turntable.gif",
    params:
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/views/{{variant}}/{{pid}}-seed{{seed}}.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.views") + " --model {input.model:q} --mesh {input.mesh:q} --glb {input.glb:q}"
        " --out-dir {params.out:q} > {log:q} 2>&1"


rule geometry:
    """Geometry against the truth (bundled world): 3D IoU, fog, Chamfer, normal consistency, silhouette IoU."""
    input:
        model=final_model,
        mesh=f"{OBJ}/mesh.ply",
        views=f"{OBJ}/views.npz",
        agreement=f"{OBJ}/views.json",
        first=first_stage,
        code=code("pipeline.geometry"),
    output:
        f"{OBJ}/geometry.json",
    params:
        first=lambda w, input: ["--first-stage", input.first] if input.first else [],
    log:
        f"{RESULTS}/logs/geometry/{{variant}}/{{pid}}-seed{{seed}}.log",
    conda:
        "../envs/dreamfusion.yaml"
    shell:
        stage("pipeline.geometry") + " --model {input.model:q} --mesh {input.mesh:q}"
        " --views {input.views:q} {params.first:q} --out {output:q} > {log:q} 2>&1"
