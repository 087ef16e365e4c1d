# Slide tasks' final models (written by `mil`) applied to the sheet's slides without a label,
# and one table of the predictions per task.


rule predict:
    input:
        unpack(
            lambda w: ancient_features(
                PLAN.predict_inputs(w.stask, w.backbone, w.slide)
            )
        ),
        slide=slide_path,
    output:
        json=PATHS.predict(),
        attention=PATHS.predict_attention(),
        heatmap=PATHS.predict_heatmap(),
    log:
        log_of("predict", "{stask}", "{backbone}", "{slide}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        path=lambda wildcards: PLAN.slide_file(wildcards.slide),
        mpp=lambda wildcards: PLAN.slide_mpp(wildcards.slide),
        thumbnail_mpp=CFG.tiling.mask_mpp,
        precision=CFG.embed.precision,  # of the features: a change reruns the job
        features=lambda w: PATHS.features(
            w.backbone, PLAN.slide_tasks[w.stask].instances, w.slide
        ),
    script:
        "../scripts/predict.py"


rule predict_table:
    input:
        lambda w: [
            PATHS.predict(w.stask, b, s)
            for b in PLAN.backbones
            for s in PLAN.predict_slides(w.stask)
        ],
    output:
        PATHS.predict_table("{stask}"),
    log:
        log_of("predict_table", "{stask}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    script:
        "../scripts/predict_table.py"
