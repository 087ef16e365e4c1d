# Foreground mask and tile grid per slide, with a QC thumbnail.


rule tile:
    input:
        slide=slide_path,
    output:
        store=directory(f"{RESULTS}/tiles/{{slide}}.zarr"),
        qc=report(
            f"{RESULTS}/qc/{{slide}}.png",
            caption="../report/qc.rst",
            category="Quality control",
            labels={"slide": "{slide}", "figure": "tissue mask and tiles"},
        ),
    log:
        f"{RESULTS}/logs/tile/{{slide}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: threads_of("tile")
    resources:
        mem_mb=mem_of("tile"),
        runtime=runtime_of("tile"),
    params:
        path=slide_file,
        mpp=slide_mpp,
        tiling=TILING.to_dict(),
    script:
        "../scripts/tile.py"
