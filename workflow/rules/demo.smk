# The synthetic demo: slides with ground truth, a sample sheet, a labelled crop collection.


rule demo_slide:
    output:
        slide=f"{RESULTS}/demo/slides/{{slide}}.tif",
        truth=f"{RESULTS}/demo/ground_truth/{{slide}}.tsv",
    log:
        f"{RESULTS}/logs/demo_slide/{{slide}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("demo_slide")
    resources:
        mem_mb=mem_of("demo_slide"),
        runtime=runtime_of("demo_slide"),
    params:
        demo=DEMO.to_dict(),
    script:
        "../scripts/demo_slide.py"


rule demo_sheet:
    output:
        f"{RESULTS}/demo/slides.tsv",
    log:
        f"{RESULTS}/logs/demo_sheet.log",
    conda:
        "../../envs/cytofm.yaml"
    params:
        demo=DEMO.to_dict(),
    script:
        "../scripts/demo_sheet.py"


rule demo_crops:
    output:
        table=f"{RESULTS}/demo/crops/labels.csv",
    log:
        f"{RESULTS}/logs/demo_crops.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("demo_crops")
    resources:
        mem_mb=mem_of("demo_crops"),
        runtime=runtime_of("demo_crops"),
    params:
        demo=DEMO.to_dict(),
    script:
        "../scripts/demo_crops.py"


rule detection_eval:
    input:
        cells=expand(f"{RESULTS}/cells/{{slide}}.zarr", slide=DEMO_IDS),
        truth=expand(f"{RESULTS}/demo/ground_truth/{{slide}}.tsv", slide=DEMO_IDS),
    output:
        f"{RESULTS}/qc/detection.json",
    log:
        f"{RESULTS}/logs/detection_eval.log",
    conda:
        "../../envs/cytofm.yaml"
    params:
        tolerance_um=config["detection_eval"]["tolerance_um"],
    script:
        "../scripts/detection_eval.py"
