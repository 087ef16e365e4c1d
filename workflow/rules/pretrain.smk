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
    threads: threads_of("pretrain")
    resources:
        mem_mb=mem_of("pretrain"),
        runtime=runtime_of("pretrain"),
        gpu=gpus_of("pretrain"),
        tasks_per_gpu=0,  # SLURM: one task; torchrun starts the per-GPU processes
    params:
        pretrain=PRETRAIN.to_dict(),
        nproc=config["pretrain"]["nproc"],
        held_out=pretrain_held_out(),
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
    # ready as soon as pretraining ends; run it among the embedding jobs, not alone at the end
    priority: 1
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("pretrain_probe")
    resources:
        mem_mb=mem_of("pretrain_probe"),
        runtime=runtime_of("pretrain_probe"),
    script:
        "../scripts/pretrain_probe.py"
