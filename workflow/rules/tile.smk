# Foreground mask and tile grid per slide, with a QC thumbnail.


rule tile:
    input:
        slide=slide_path,
    output:
        store=directory(f"{RESULTS}/tiles/{{slide}}.zarr"),
        qc=f"{RESULTS}/qc/{{slide}}.png",
    params:
        mpp=slide_mpp,
        tiling=TILING.to_dict(),
    log:
        f"{RESULTS}/logs/tile/{{slide}}.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/cytofm.yaml"
    script:
        "../scripts/tile.py"
