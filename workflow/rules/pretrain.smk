# iBOT pretraining of a ViT on the patch stores, and a linear probe against random weights.


rule pretrain:
    input:
        stores=PLAN.pretrain_stores,
        knn=PLAN.knn_store,
    output:
        backbone=directory(PATHS.pretrained()),
    log:
        log_of("pretrain", "{model}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("pretrain")
    resources:
        **PLAN.slurm_nodes("pretrain"),  # nodes, gres, one task per node for srun
        mem_mb=mem_of("pretrain"),
        runtime=runtime_of("pretrain"),
        # several nodes: the GPUs per node go in `gres` (the plugin's `gpu` is the job's total)
        gpu=PLAN.gpus("pretrain") if PLAN.nodes("pretrain") == 1 else 0,
        tasks_per_gpu=0,  # SLURM: one task; torchrun starts the per-GPU processes
    params:
        pretrain=lambda wildcards: PLAN.pretrain_params(wildcards.model),  # its seed
        nproc=CFG.pretrain.nproc,
        nodes=PLAN.nodes("pretrain"),
        gpus_per_node=PLAN.gpus("pretrain"),
        held_out=PLAN.held_out(),
        out_dir=lambda wildcards: PATHS.pretrain_dir(wildcards.model),
    script:
        "../scripts/pretrain.py"


rule pretrain_probe:
    input:
        backbone=PATHS.pretrained(),
        dataset=PLAN.knn_store,
    output:
        PATHS.probe(),
    log:
        log_of("pretrain_probe", "{model}"),
    # ready as soon as pretraining ends; run it among the embedding jobs, not alone at the end
    priority: 1
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("pretrain_probe")
    resources:
        mem_mb=mem_of("pretrain_probe"),
        runtime=runtime_of("pretrain_probe"),
    params:
        task=PLAN.probe_task().to_dict(),
        evaluate=CFG.evaluate.part("probe"),
    script:
        "../scripts/pretrain_probe.py"


rule model_card:
    input:
        unpack(lambda w: PLAN.model_card_inputs()),
    output:
        directory(PATHS.model_card()),
    log:
        log_of("model_card", "{model}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        backbones=PLAN.model_card_backbones(),
        synthetic=PLAN.pretrained_on_demo,
    script:
        "../scripts/model_card.py"
