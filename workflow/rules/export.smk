# Files for other tools, asked for with `export:` in config or as targets: a slide's cells and
# tissue as GeoJSON QuPath imports, and a backbone's features of a slide as HDF5 in the
# layouts TRIDENT and STAMP read.


rule export_geojson:
    input:
        cells=PATHS.cells(),
        tiles=PATHS.tiles(),
    output:
        PATHS.geojson(),
    log:
        log_of("export_geojson", "{slide}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        export=CFG.export.to_dict(),
    script:
        "../scripts/export_geojson.py"


rule export_features:
    input:
        features=lambda w: ancient(
            PLAN.slide_features_input(w.backbone, w.kind, w.source)
        ),
        backbone=PATHS.backbone(),
        store=PATHS.store(),
    output:
        trident=PATHS.features_h5("trident"),
        stamp=PATHS.features_h5("stamp"),
    log:
        log_of("export_features", "{backbone}", "{kind}", "{source}"),
    conda:
        "../../envs/cytofm.yaml"
    threads: 1
    params:
        features=PATHS.features(),
        precision=CFG.embed.precision,  # of the features: a change reruns the job
    script:
        "../scripts/export_features.py"
