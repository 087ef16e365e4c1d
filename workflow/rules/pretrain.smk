# iBOT pretraining of a ViT on the patch stores, and a linear probe against random weights.


rule pretrain:
    input:
        stores=PRETRAIN_STORES,
        knn=KNN_STORE,
    output:
        backbone=directory(f"{RESULTS}/pretrain/{{model}}/backbone"),
    log:
        f"{RESULTS}/logs/pretrain/{{model}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: 8
    resources:
        mem_mb=8000,
        gpu=1,
    params:
        pretrain=PRETRAIN.to_dict(),
        nproc=config["pretrain"]["nproc"],
        out_dir=lambda wildcards: f"{RESULTS}/pretrain/{wildcards.model}",
    script:
        "../scripts/pretrain.py"


rule pretrain_probe:
    input:
        backbone=f"{RESULTS}/pretrain/{{model}}/backbone",
        dataset=KNN_STORE,
    output:
        f"{RESULTS}/pretrain/{{model}}/probe.json",
    log:
        f"{RESULTS}/logs/pretrain_probe/{{model}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: 2
    script:
        "../scripts/pretrain_probe.py"
