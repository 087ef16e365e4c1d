# Labelled cell-image collections imported into the patch-store format.


rule import_dataset:
    input:
        dataset_source,
    output:
        directory(f"{RESULTS}/datasets/{{dataset}}.zarr"),
    params:
        dataset=lambda wildcards: DATASETS[wildcards.dataset],
    log:
        f"{RESULTS}/logs/import_dataset/{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/cytofm.yaml"
    script:
        "../scripts/import_dataset.py"
