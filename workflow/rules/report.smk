# The results report: tables, figures and index.html over every result of the run.


rule report:
    input:
        unpack(report_inputs),
    output:
        index=report(
            f"{RESULTS}/report/index.html",
            caption="../report/index.rst",
            category="Report",
        ),
        figures=report(
            directory(f"{RESULTS}/report/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Report",
            subcategory="Figures",
        ),
        tables=directory(f"{RESULTS}/report/tables"),
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        report=REPORT.to_dict(),
        embeddings=report_embeddings(),
        slide_features=report_slide_features(),
        slide_meta=report_slide_meta(),
        qc=[[s, f"{RESULTS}/qc/{s}.png"] for s in SLIDE_IDS],
    script:
        "../scripts/report.py"
