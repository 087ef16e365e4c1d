# Feature caching (every backbone x every patch store), the patch-level evaluation protocols
# and slide-level attention MIL.


rule backbone:
    input:
        unpack(lambda wildcards: PLAN.backbone_inputs(wildcards.backbone)),
    output:
        directory(PATHS.backbone()),
    log:
        log_of("backbone", "{backbone}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("backbone")
    resources:
        mem_mb=mem_of("backbone"),
        runtime=runtime_of("backbone"),
    params:
        backbone=lambda wildcards: PLAN.backbones[wildcards.backbone].to_dict(),
    script:
        "../scripts/backbone.py"


# an imported dataset's features: one job per dataset and backbone
rule embed:
    input:
        unpack(lambda wildcards: PLAN.backbone_inputs(wildcards.backbone)),
        backbone=PATHS.backbone(),
        store=PATHS.store(),
    output:
        directory(PATHS.features()),
    log:
        log_of("embed", "{backbone}", "{kind}", "{source}"),
    wildcard_constraints:
        kind="datasets",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("embed")
    resources:
        mem_mb=mem_of("embed"),
        runtime=runtime_of("embed"),
        gpu=GPU,
    params:
        backbone=lambda wildcards: PLAN.backbones[wildcards.backbone].to_dict(),
        embed=CFG.embed.to_dict(),
    script:
        "../scripts/embed.py"


# slides' features: one job per `embed.slides_per_job` slides (in the sheet's order) and
# backbone, which writes each slide's store (PATHS.features) and, last, the job's manifest; the
# jobs reading a slide's features depend on that manifest (PLAN.slide_features_input).
rule embed_slides:
    input:
        unpack(lambda w: PLAN.shard_inputs(w.backbone, w.kind, w.shard)),
    output:
        manifest=PATHS.features_shard(),
    log:
        log_of("embed_slides", "{backbone}", "{kind}", "{shard}"),
    wildcard_constraints:
        kind="cells|tiles",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("embed")
    resources:
        mem_mb=mem_of("embed"),
        runtime=runtime_of("embed"),
        gpu=GPU,
    params:
        backbone=lambda wildcards: PLAN.backbones[wildcards.backbone].to_dict(),
        embed=CFG.embed.to_dict(),
        slides=lambda w: PLAN.shard_slides(w.shard),
        features=lambda w: PLAN.shard_outputs(w.backbone, w.kind, w.shard),
    script:
        "../scripts/embed.py"


rule evaluate:
    input:
        unpack(lambda w: PLAN.evaluate_inputs(w.task, w.backbone, w.protocol)),
    output:
        json=PATHS.result(),
        predictions=PATHS.predictions(),
    log:
        log_of("evaluate", "{task}", "{backbone}", "{protocol}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("evaluate")
    resources:
        mem_mb=mem_of("evaluate"),
        runtime=runtime_of("evaluate"),
        gpu=lambda wildcards: GPU if EVAL_PROTOCOLS[wildcards.protocol].uses_gpu else 0,
    params:
        task=lambda wildcards: PLAN.tasks[wildcards.task].to_dict(),
        evaluate=lambda wildcards: settings_read(wildcards.protocol, CFG.evaluate),
        backbone=lambda wildcards: PLAN.backbones[wildcards.backbone].to_dict(),
    script:
        "../scripts/evaluate.py"


rule cell_head:
    input:
        dataset=lambda w: PATHS.dataset(PLAN.tasks[w.task].dataset),
        features=lambda w: PATHS.features(
            w.backbone, "datasets", PLAN.tasks[w.task].dataset
        ),
    output:
        directory(PATHS.cell_head()),
    log:
        log_of("cell_head", "{task}", "{backbone}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        task=lambda wildcards: PLAN.tasks[wildcards.task].to_dict(),
        evaluate=CFG.evaluate.part("probe"),  # the linear probe's settings only
    script:
        "../scripts/cell_head.py"


rule robustness:
    input:
        dataset=lambda w: PATHS.dataset(PLAN.tasks[w.task].dataset),
        features=lambda w: PATHS.features(
            w.backbone, "datasets", PLAN.tasks[w.task].dataset
        ),
    output:
        PATHS.robustness(),
    log:
        log_of("robustness", "{task}", "{backbone}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        task=lambda wildcards: PLAN.tasks[wildcards.task].to_dict(),
        evaluate=CFG.evaluate.part("robustness"),
    script:
        "../scripts/robustness.py"


rule eval_summary:
    input:
        lambda wildcards: PLAN.task_results(wildcards.task),
    output:
        csv=PATHS.summary("{task}"),
        comparisons=PATHS.comparisons("{task}"),
        hierarchy=PATHS.hierarchy("{task}"),
        calibration=PATHS.calibration("{task}"),
        reliability=PATHS.task_figure("{task}", "reliability"),
        png=report(
            PATHS.task_figure("{task}", "fewshot"),
            caption="../report/fewshot.rst",
            category="Evaluation",
            labels={"task": "{task}", "figure": "few-shot curves"},
        ),
    log:
        log_of("eval_summary", "{task}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        bootstrap=CFG.evaluate.bootstrap,
        checkpoints=PLAN.checkpoint_groups(),
        conformal_alpha=CFG.evaluate.conformal_alpha,
        hierarchy=lambda wildcards: PLAN.tasks[wildcards.task].hierarchy,
        screening=lambda wildcards: PLAN.tasks[wildcards.task].screening,
    script:
        "../scripts/eval_summary.py"


rule mil:
    input:
        unpack(lambda w: ancient_features(PLAN.mil_inputs(w.stask, w.backbone))),
    output:
        json=PATHS.abmil(),
        dir=directory(PATHS.abmil_dir()),
    log:
        log_of("mil", "{stask}", "{backbone}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("mil")
    resources:
        mem_mb=mem_of("mil"),
        runtime=runtime_of("mil"),
    params:
        task=lambda wildcards: PLAN.slide_tasks[wildcards.stask].to_dict(),
        evaluate=CFG.evaluate.part("mil"),
        cohort=lambda wildcards: PLAN.cohort(wildcards.stask),
        features=lambda w: PLAN.mil_features(w.stask, w.backbone),
        precision=CFG.embed.precision,  # of the features: a change reruns the job
        tolerance_um=CFG.detection_eval.tolerance_um,
        thumbnail_mpp=CFG.tiling.mask_mpp,
        backbone_kind=lambda wildcards: PLAN.backbones[wildcards.backbone].kind,
        exposure=lambda wildcards: PLAN.mil_exposure(
            wildcards.stask, wildcards.backbone
        ),
    script:
        "../scripts/mil.py"


rule mil_summary:
    input:
        lambda wildcards: PLAN.task_results(wildcards.stask),
    output:
        csv=PATHS.summary("{stask}"),
        comparisons=PATHS.comparisons("{stask}"),
        calibration=PATHS.calibration("{stask}"),
        reliability=PATHS.task_figure("{stask}", "reliability"),
        png=report(
            PATHS.task_figure("{stask}", "slide_auroc"),
            caption="../report/mil.rst",
            category="Evaluation",
            labels={"task": "{stask}", "figure": "attention MIL AUROC"},
        ),
    log:
        log_of("eval_summary", "{stask}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        plot="mil",
        bootstrap=CFG.evaluate.bootstrap,
        checkpoints=PLAN.checkpoint_groups(),
    script:
        "../scripts/eval_summary.py"
