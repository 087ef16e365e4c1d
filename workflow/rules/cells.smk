# Nucleus detection and cell-centred patches per slide.


rule cells:
    input:
        slide=slide_path,
        tiles=f"{RESULTS}/tiles/{{slide}}.zarr",
    output:
        store=directory(f"{RESULTS}/cells/{{slide}}.zarr"),
        gallery=report(
            f"{RESULTS}/qc/{{slide}}.cells.png",
            caption="../report/cells.rst",
            category="Quality control",
            labels={"slide": "{slide}", "figure": "detected cells"},
        ),
        summary=f"{RESULTS}/qc/{{slide}}.cells.json",
    log:
        f"{RESULTS}/logs/cells/{{slide}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("cells")
    resources:
        mem_mb=mem_of("cells"),
        runtime=runtime_of("cells"),
    params:
        path=slide_file,
        mpp=slide_mpp,
        stain=slide_stain,
        cells=CELLS.to_dict(),
    script:
        "../scripts/cells.py"
