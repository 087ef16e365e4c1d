# Foreground mask and tile grid per slide, with a QC thumbnail.


rule tile:
    input:
        slide=slide_path,
    output:
        store=directory(f"{RESULTS}/tiles/{{slide}}.zarr"),
        qc=f"{RESULTS}/qc/{{slide}}.png",
    log:
        f"{RESULTS}/logs/tile/{{slide}}.log",
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        mpp=slide_mpp,
        tiling=TILING.to_dict(),
    script:
        "../scripts/tile.py"
