# The synthetic demo: slides with ground truth, a sample sheet, a labelled crop collection.


rule demo_slide:
    output:
        slide=PATHS.demo_slide(),
        truth=PATHS.demo_truth(),
    log:
        log_of("demo_slide", "{slide}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("demo_slide")
    resources:
        mem_mb=mem_of("demo_slide"),
        runtime=runtime_of("demo_slide"),
    params:
        demo=CFG.demo.to_dict(),
    script:
        "../scripts/demo_slide.py"


rule demo_sheet:
    output:
        PATHS.demo_sheet(),
    log:
        log_of("demo_sheet"),
    conda:
        "../../envs/cytofm.yaml"
    params:
        demo=CFG.demo.to_dict(),
    script:
        "../scripts/demo_sheet.py"


rule demo_crops:
    output:
        table=PATHS.demo_crops(),
    log:
        log_of("demo_crops"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("demo_crops")
    resources:
        mem_mb=mem_of("demo_crops"),
        runtime=runtime_of("demo_crops"),
    params:
        demo=CFG.demo.to_dict(),
    script:
        "../scripts/demo_crops.py"
