# The results report: tables, figures and index.html over every result of the run.


rule report:
    input:
        unpack(lambda wildcards: PLAN.report_inputs()),
    output:
        index=report(
            PATHS.report(),
            caption="../report/index.rst",
            category="Report",
        ),
        figures=report(
            directory(PATHS.report("figures")),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Report",
            subcategory="Figures",
        ),
        tables=directory(PATHS.report("tables")),
    log:
        log_of("report"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        report=CFG.report.to_dict(),
        embeddings=PLAN.report_embeddings(),
        slide_features=PLAN.report_slide_features(),
        slide_meta=PLAN.report_slide_meta(),
        qc=[[s, PATHS.qc(s)] for s in PLAN.slide_ids],
        trees=PLAN.report_trees(),
        calibration=PLAN.report_calibration(),
        robustness=PLAN.report_robustness(),
        checkpoints=PLAN.checkpoint_groups(),
        bootstrap=CFG.evaluate.bootstrap,
    script:
        "../scripts/report.py"
