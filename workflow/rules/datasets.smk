# Labelled cell-image collections imported into the patch-store format.


rule import_dataset:
    input:
        dataset_source,
    output:
        directory(f"{RESULTS}/datasets/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/import_dataset/{{dataset}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("import_dataset")
    resources:
        mem_mb=mem_of("import_dataset"),
        runtime=runtime_of("import_dataset"),
    params:
        dataset=lambda wildcards: DATASETS[wildcards.dataset],
    script:
        "../scripts/import_dataset.py"
