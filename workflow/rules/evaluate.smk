# Feature caching (every backbone x every patch store), the patch-level evaluation protocols
# and slide-level attention MIL.


rule backbone:
    input:
        unpack(backbone_inputs),
    output:
        directory(f"{RESULTS}/backbones/{{backbone}}"),
    log:
        f"{RESULTS}/logs/backbone/{{backbone}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("backbone")
    resources:
        mem_mb=mem_of("backbone"),
        runtime=runtime_of("backbone"),
    params:
        backbone=lambda wildcards: BACKBONES[wildcards.backbone].to_dict(),
    script:
        "../scripts/backbone.py"


rule embed:
    input:
        unpack(backbone_inputs),
        backbone=f"{RESULTS}/backbones/{{backbone}}",
        store=f"{RESULTS}/{{kind}}/{{source}}.zarr",
    output:
        directory(f"{RESULTS}/features/{{backbone}}/{{kind}}/{{source}}.zarr"),
    log:
        f"{RESULTS}/logs/embed/{{backbone}}/{{kind}}/{{source}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("embed")
    resources:
        mem_mb=mem_of("embed"),
        runtime=runtime_of("embed"),
        gpu=GPU,
    params:
        backbone=lambda wildcards: BACKBONES[wildcards.backbone].to_dict(),
        embed=EMBED.to_dict(),
    script:
        "../scripts/embed.py"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        json=f"{RESULTS}/eval/{{task}}/{{backbone}}/{{protocol}}.json",
        predictions=f"{RESULTS}/eval/{{task}}/{{backbone}}/{{protocol}}.predictions.npz",
    log:
        f"{RESULTS}/logs/evaluate/{{task}}/{{backbone}}/{{protocol}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("evaluate")
    resources:
        mem_mb=mem_of("evaluate"),
        runtime=runtime_of("evaluate"),
        gpu=lambda wildcards: GPU if EVAL_PROTOCOLS[wildcards.protocol].uses_gpu else 0,
    params:
        task=lambda wildcards: TASKS[wildcards.task].to_dict(),
        evaluate=EVAL.part("patch"),
        backbone=lambda wildcards: BACKBONES[wildcards.backbone].to_dict(),
    script:
        "../scripts/evaluate.py"


rule eval_summary:
    input:
        lambda wildcards: [
            f"{RESULTS}/eval/{wildcards.task}/{backbone}/{protocol}.json"
            for backbone in BACKBONES
            for protocol in TASKS[wildcards.task].protocols
        ],
    output:
        csv=f"{RESULTS}/eval/{{task}}/summary.csv",
        comparisons=f"{RESULTS}/eval/{{task}}/comparisons.csv",
        png=report(
            f"{RESULTS}/eval/{{task}}/fewshot.png",
            caption="../report/fewshot.rst",
            category="Evaluation",
            labels={"task": "{task}", "figure": "few-shot curves"},
        ),
    log:
        f"{RESULTS}/logs/eval_summary/{{task}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        bootstrap=EVAL.bootstrap,
    script:
        "../scripts/eval_summary.py"


rule mil:
    input:
        unpack(mil_inputs),
    output:
        json=f"{RESULTS}/eval/{{stask}}/{{backbone}}/abmil.json",
        dir=directory(f"{RESULTS}/eval/{{stask}}/{{backbone}}/abmil"),
    log:
        f"{RESULTS}/logs/mil/{{stask}}/{{backbone}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("mil")
    resources:
        mem_mb=mem_of("mil"),
        runtime=runtime_of("mil"),
    params:
        task=lambda wildcards: SLIDE_TASKS[wildcards.stask].to_dict(),
        evaluate=EVAL.part("mil"),
        cohort=lambda wildcards: mil_cohort(wildcards.stask),
        tolerance_um=config["detection_eval"]["tolerance_um"],
        thumbnail_mpp=TILING.mask_mpp,
        backbone_kind=lambda wildcards: BACKBONES[wildcards.backbone].kind,
        exposure=mil_exposure,
    script:
        "../scripts/mil.py"


rule mil_summary:
    input:
        lambda wildcards: [
            f"{RESULTS}/eval/{wildcards.stask}/{backbone}/abmil.json"
            for backbone in BACKBONES
        ],
    output:
        csv=f"{RESULTS}/eval/{{stask}}/summary.csv",
        comparisons=f"{RESULTS}/eval/{{stask}}/comparisons.csv",
        png=report(
            f"{RESULTS}/eval/{{stask}}/slide_auroc.png",
            caption="../report/mil.rst",
            category="Evaluation",
            labels={"task": "{stask}", "figure": "attention MIL AUROC"},
        ),
    log:
        f"{RESULTS}/logs/eval_summary/{{stask}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        plot="mil",
        bootstrap=EVAL.bootstrap,
    script:
        "../scripts/eval_summary.py"
