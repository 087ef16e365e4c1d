# Foreground mask and tile grid per slide, with a QC thumbnail.


rule tile:
    input:
        slide=slide_path,
    output:
        store=directory(PATHS.tiles()),
        qc=report(
            PATHS.qc(),
            caption="../report/qc.rst",
            category="Quality control",
            labels={"slide": "{slide}", "figure": "tissue mask and tiles"},
        ),
    log:
        log_of("tile", "{slide}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("tile")
    resources:
        mem_mb=mem_of("tile"),
        runtime=runtime_of("tile"),
        # one slot of a SLURM submission of slides (profiles/slurm: groups, slide_jobs)
        slide_jobs=1,
    params:
        path=lambda wildcards: PLAN.slide_file(wildcards.slide),
        mpp=lambda wildcards: PLAN.slide_mpp(wildcards.slide),
        tiling=CFG.tiling.to_dict(),
    script:
        "../scripts/tile.py"
