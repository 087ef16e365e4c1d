# Nucleus detection and cell-centred patches per slide.


rule cells:
    input:
        slide=slide_path,
        tiles=PATHS.tiles(),
    output:
        store=directory(PATHS.cells()),
        gallery=report(
            PATHS.cells_gallery(),
            caption="../report/cells.rst",
            category="Quality control",
            labels={"slide": "{slide}", "figure": "detected cells"},
        ),
        summary=PATHS.cells_summary(),
    log:
        log_of("cells", "{slide}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("cells")
    resources:
        mem_mb=mem_of("cells"),
        runtime=runtime_of("cells"),
        # one slot of a SLURM submission of slides (profiles/slurm: groups, slide_jobs)
        slide_jobs=1,
    params:
        path=lambda wildcards: PLAN.slide_file(wildcards.slide),
        mpp=lambda wildcards: PLAN.slide_mpp(wildcards.slide),
        stain=lambda wildcards: PLAN.slide_stain(wildcards.slide),
        cells=CFG.cells.to_dict(),
    script:
        "../scripts/cells.py"


# Detections against the sheet's cell_truth tables (the demo writes one per slide): recall,
# precision and an overlay per slide; its own job, so a new truth table never reruns detection.
rule detection_eval:
    input:
        unpack(lambda wildcards: PLAN.detection_inputs()),
    output:
        json=PATHS.detection(),
        overlays=directory(PATHS.detection_overlays()),
    log:
        log_of("detection_eval"),
    conda:
        "../../envs/cytofm.yaml"
    params:
        tolerance_um=CFG.detection_eval.tolerance_um,
        slides=PLAN.detection_slides(),
    script:
        "../scripts/detection_eval.py"
