# Labelled cell-image collections imported into the patch-store format.


rule import_dataset:
    input:
        lambda wildcards: PLAN.dataset_source(wildcards.dataset),
    output:
        directory(PATHS.dataset()),
    log:
        log_of("import_dataset", "{dataset}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("import_dataset")
    resources:
        mem_mb=mem_of("import_dataset"),
        runtime=runtime_of("import_dataset"),
    params:
        dataset=lambda wildcards: PLAN.datasets[wildcards.dataset],
    script:
        "../scripts/import_dataset.py"
