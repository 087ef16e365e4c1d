# The synthetic demo: slides with ground truth, a sample sheet, a labelled crop collection.


rule demo_slide:
    output:
        slide=f"{RESULTS}/demo/slides/{{slide}}.tif",
        truth=f"{RESULTS}/demo/ground_truth/{{slide}}.tsv",
    params:
        demo=DEMO.to_dict(),
    log:
        f"{RESULTS}/logs/demo_slide/{{slide}}.log",
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../../envs/cytofm.yaml"
    script:
        "../scripts/demo_slide.py"


rule demo_sheet:
    output:
        f"{RESULTS}/demo/slides.tsv",
    params:
        demo=DEMO.to_dict(),
    log:
        f"{RESULTS}/logs/demo_sheet.log",
    conda:
        "../../envs/cytofm.yaml"
    script:
        "../scripts/demo_sheet.py"


rule demo_crops:
    output:
        table=f"{RESULTS}/demo/crops/labels.csv",
    params:
        demo=DEMO.to_dict(),
    log:
        f"{RESULTS}/logs/demo_crops.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/cytofm.yaml"
    script:
        "../scripts/demo_crops.py"


rule detection_eval:
    input:
        cells=expand(f"{RESULTS}/cells/{{slide}}.zarr", slide=DEMO_IDS),
        truth=expand(f"{RESULTS}/demo/ground_truth/{{slide}}.tsv", slide=DEMO_IDS),
    output:
        f"{RESULTS}/qc/detection.json",
    params:
        tolerance_um=config["detection_eval"]["tolerance_um"],
    log:
        f"{RESULTS}/logs/detection_eval.log",
    conda:
        "../../envs/cytofm.yaml"
    script:
        "../scripts/detection_eval.py"
