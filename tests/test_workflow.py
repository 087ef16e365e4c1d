"""Workflow tier: lint, dry-run and a real end-to-end Snakemake run on the tiny config."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / ".test" / "config.yaml"
pytestmark = pytest.mark.workflow


def snakemake(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe), "--cores", "2", "--configfile", str(TINY), *args]
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=full_env, timeout=900)


@pytest.fixture(scope="module")
def results(tmp_path_factory, mlflow_server):
    """The tiny workflow, tracked by a real MLflow server on localhost."""
    out = tmp_path_factory.mktemp("wf") / "results"
    (out.parent / "started").write_text(str(int(time.time() * 1000)))
    proc = snakemake("--config", f"results={out}", env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def runs(results, mlflow_server):
    """The tiny workflow's MLflow runs, by job id (tag ``cytofm.job_id``), read back from the
    server (which other tests of the session, e.g. the SLURM one, also log to: only runs
    started after ours)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("cytofm-test")
    started = int((results.parent / "started").read_text())
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"attributes.start_time >= {started}",
        max_results=1000,
    )
    return {r.data.tags["cytofm.job_id"]: r for r in found if "cytofm.job_id" in r.data.tags}


def test_lint_is_clean():
    proc = snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_dry_run_lists_every_stage(tmp_path):
    proc = snakemake("-n", "--config", f"results={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    for rule in (
        "demo_slide",
        "demo_crops",
        "tile",
        "cells",
        "import_dataset",
        "detection_eval",
        "pretrain",
        "pretrain_probe",
        "model_card",
        "cell_head",
        "backbone",
        "embed",
        "embed_slides",
        "evaluate",
        "eval_summary",
        "mil",
        "mil_summary",
    ):
        assert rule in proc.stdout


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in (REPO / "configs").glob("*.yaml")),
)
def test_shipped_configs_plan(name, tmp_path):
    """Each shipped config builds its DAG (a dry run needs no data)."""
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(exe),
        "-n",
        "--configfile",
        "config.yaml",
        f"configs/{name}",
        "--config",
        f"results={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pretrain" in proc.stdout


@pytest.mark.parametrize(
    ("slide_task", "pattern"),
    [
        ({"label": "grade"}, r"label 'grade' is not a column of the sample sheet"),
        ({"label": "abnormal", "instances": "tiles"}, r"add 'tiles' to embed.sources"),
        ({"label": "stain"}, r"hold 1 class\(es\) \['papanicolaou'\]"),
    ],
)
def test_slide_task_errors_before_any_job(slide_task, pattern, tmp_path):
    """A slide task that cannot work fails the DAG build with the key and the fix."""
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"evaluate": {"slide_tasks": {"bad": slide_task}}}))
    proc = snakemake("-n", "--configfile", str(TINY), str(cfg), "--config", f"results={tmp_path}")
    assert proc.returncode != 0
    assert re.search(pattern, proc.stdout + proc.stderr), (proc.stdout + proc.stderr)[-2000:]


def test_a_leaking_config_fails_before_any_job(tmp_path):
    """Pretraining on the slides the slide task cross-validates is refused at start, naming
    the task, a store and the fix; ``pretrain.transductive: true`` accepts it and the
    pretraining job is then told so."""
    leak = tmp_path / "leak.yaml"
    leak.write_text("pretrain:\n  splits: [train, val, test]\n")
    proc = snakemake("-n", "--configfile", str(TINY), str(leak), "--config", f"results={tmp_path}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "slide task 'demo_abnormal' cross-validates 4 slide(s)" in out
    assert f"{tmp_path}/cells/demo_001.zarr" in out and "pretrain.transductive: true" in out
    assert not (tmp_path / "demo").exists()  # nothing ran
    opt_in = tmp_path / "transductive.yaml"
    opt_in.write_text("pretrain:\n  splits: [train, val, test]\n  transductive: true\n")
    proc = snakemake(
        "-n", "-p", "--configfile", str(TINY), str(opt_in), "--config", f"results={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _pretrain_resources(output: str) -> str:
    block = output[output.index("rule pretrain:") :]
    return next(line for line in block.splitlines() if line.strip().startswith("resources:"))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "gpu=1"),  # the local profile has one GPU: the job is granted what exists
        (["--resources", "gpu=4"], "gpu=4"),  # a 4-GPU box: one job, 4 GPUs, 4 processes
    ],
)
def test_pretraining_job_asks_for_its_gpus(extra, expected, tmp_path):
    """`resources.pretrain.gpus` becomes the job's gpu resource (the SLURM plugin's --gpus,
    torchrun's process count), capped by what the local machine declares."""
    cfg = tmp_path / "gpus.yaml"
    cfg.write_text("resources:\n  gpu: true\n  pretrain: {gpus: 4}\n")
    proc = snakemake(
        "-n", "--configfile", str(TINY), str(cfg), "--config", f"results={tmp_path}", *extra
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resources = _pretrain_resources(proc.stdout)
    assert re.search(rf"\b{expected}\b", resources) and "tasks_per_gpu=0" in resources


def test_cluster_submission_asks_for_the_gpus_from_a_host_without_any(tmp_path):
    """With `--jobs` (how profiles/slurm runs) the jobs go to a cluster: `gpu: auto` asks for
    the configured GPUs even where the submitting host has none, and nothing caps them."""
    cfg = tmp_path / "gpus.yaml"
    cfg.write_text("resources:\n  pretrain: {gpus: 4}\n")
    proc = snakemake(
        "-n", "--jobs", "4", "--configfile", str(TINY), str(cfg), "--config", f"results={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\bgpu=4\b", _pretrain_resources(proc.stdout))


def test_cpu_only_machine_runs_gpu_rules_side_by_side(tmp_path):
    """`resources.gpu: auto` (the default) on a machine without an NVIDIA device asks for no
    GPU, and embed jobs take one thread each, so two run at once on two cores."""
    from cytofm.hardware import visible_gpus

    if visible_gpus():
        pytest.skip("this machine has a GPU: auto asks for it")
    proc = snakemake("-n", "--config", f"results={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = proc.stdout.index("rule embed:")
    block = proc.stdout[start : proc.stdout.index("Shell command", start)].splitlines()
    resources = next(ln for ln in block if ln.strip().startswith("resources:"))
    assert re.search(r"\bgpu=0\b", resources), resources
    threads = [ln for ln in block if ln.strip().startswith("threads:")]
    assert not threads, threads  # Snakemake prints threads only when there is more than one


def test_gpus_for_a_single_gpu_rule_is_refused(tmp_path):
    cfg = tmp_path / "gpus.yaml"
    cfg.write_text("resources:\n  embed: {gpus: 2}\n")
    proc = snakemake("-n", "--configfile", str(TINY), str(cfg), "--config", f"results={tmp_path}")
    assert proc.returncode != 0
    assert "'gpus' is read for pretrain only" in proc.stdout + proc.stderr


def test_end_to_end_outputs(results):
    from cytofm.store import open_store

    for sid in ("demo_000", "demo_001"):  # a pretraining slide and a cohort slide
        assert (results / "qc" / f"{sid}.png").is_file()
        assert open_store(results / "tiles" / f"{sid}.zarr")["boxes"].shape[0] > 0
        cells = open_store(results / "cells" / f"{sid}.zarr")
        assert cells["images"].shape[1:] == (32, 32, 3) and cells["images"].shape[0] > 3
    ds = open_store(results / "datasets" / "demo_cells.zarr")
    assert ds["images"].shape == (80, 32, 32, 3)
    det = json.loads((results / "qc" / "detection.json").read_text())
    assert det["pooled"]["recall"] >= 0.9 and det["pooled"]["precision"] >= 0.9
    backbone = results / "pretrain" / "cytofm_vit_demo" / "backbone"
    assert (backbone / "model.safetensors").is_file() and (backbone / "config.json").is_file()
    assert (results / "pretrain" / "cytofm_vit_demo" / "checkpoint.pt").is_file()
    assert (results / "pretrain" / "cytofm_vit_demo" / "training.png").stat().st_size > 1000
    probe = json.loads((results / "pretrain" / "cytofm_vit_demo" / "probe.json").read_text())
    # the probe's summary is its per-seed numbers; the demo classes differ in morphology, so
    # even random features sort them better than chance (4 classes)
    assert probe["ssl_mean"] == pytest.approx(np.mean(probe["ssl"]))
    assert probe["random_mean"] == pytest.approx(np.mean(probe["random"]))
    assert len(probe["ssl"]) == len(probe["seeds"]) and probe["chance"] == 0.25
    assert min(probe["ssl_mean"], probe["random_mean"]) > probe["chance"] + 0.1
    sheet = (results / "demo" / "slides.tsv").read_text().splitlines()
    assert sheet[0].startswith("slide_id\tpath\tmpp") and len(sheet) == 6
    # pretraining read the pretraining slide only, never the slide task's cohort (inductive)
    prov = json.loads((backbone / "config.json").read_text())["provenance"]
    assert prov["inductive"]["transductive"] is False
    assert [Path(s).stem for s in prov["sources"]] == ["demo_000"]
    # the card folder: the same weights beside a hub README with the probe and task results
    hub = results / "pretrain" / "cytofm_vit_demo" / "hub"
    assert (hub / "model.safetensors").read_bytes() == (backbone / "model.safetensors").read_bytes()
    card = (hub / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm") and "synthetic demo slides" in card
    assert f"| these | {probe['ssl_mean']:.3f} +- {probe['ssl_std']:.3f} |" in card
    assert "| demo_000 | slide (cells found by the pipeline) |" in card
    assert "| demo_abnormal | random | abmil |" in card
    assert card.count("| demo_cells | cytofm | linear |") == 1  # the full-label row only


def test_every_backbone_embeds_every_store_and_is_evaluated(results):
    from cytofm.store import open_store

    for backbone in ("cytofm", "random"):
        for store in ("datasets/demo_cells", "cells/demo_000", "cells/demo_001"):
            feats = open_store(results / "features" / backbone / f"{store}.zarr")
            source = open_store(results / f"{store}.zarr")
            assert feats["features"].shape == (source["images"].shape[0], 32)
            assert feats.attrs["provenance"]["backbone"]["name"] == backbone
        for protocol in ("linear", "knn", "fewshot", "lora"):
            res = json.loads(
                (results / "eval" / "demo_cells" / backbone / f"{protocol}.json").read_text()
            )
            assert res["results"] and res["backbone"] == backbone
    summary = (results / "eval" / "demo_cells" / "summary.csv").read_text().splitlines()
    # 2 backbones x (linear + knn + 2 shot counts x (fewshot + lora) + 2 linear fractions) rows
    assert len(summary) == 1 + 2 * (2 + 2 * 2 + 2)
    assert (results / "eval" / "demo_cells" / "fewshot.png").stat().st_size > 5000


def test_train_val_calibration_and_test_rows_are_disjoint_in_every_result(results):
    """Every patch-level result of the run: the rows a model trained on, the validation rows
    that chose its settings, the rows its conformal sets were calibrated on and the rows it
    was scored on never overlap."""
    checked = 0
    for path in sorted((results / "eval").glob("*/*/*.json")):
        res = json.loads(path.read_text())
        if res.get("val_rows") is None:  # attention MIL and leave-one-out results: folds
            continue
        parts = {k: set(res[f"{k}_rows"]) for k in ("val", "calib", "test")}
        assert parts["test"], path
        for a, b in itertools.combinations(parts, 2):
            assert not parts[a] & parts[b], (path, a, b)
        for block in res["results"]:
            for run in block["runs"]:
                train = set(run.get("train_rows", []))
                assert not train & set().union(*parts.values()), (path, block["shots"])
        checked += 1
    assert checked >= 8  # 2 backbones x 4 protocols of demo_cells, and demo_abnormal's


def test_attention_mil_for_every_backbone(results):
    import pandas as pd

    from cytofm.store import open_store

    slides = [f"demo_{i:03d}" for i in range(1, 5)]  # the cohort: demo_000 is pretraining's
    rows = pd.read_csv(results / "eval" / "demo_abnormal" / "summary.csv")
    assert sorted(rows["backbone"]) == ["cytofm", "random"] and set(rows["protocol"]) == {"abmil"}
    for backbone in ("cytofm", "random"):
        res = json.loads((results / "eval" / "demo_abnormal" / backbone / "abmil.json").read_text())
        assert res["slides"] == slides and res["classes"] == ["0", "1"]
        assert res["labels"] == [0, 1, 0, 1]  # the demo sheet's 'abnormal' column
        for fold in res["folds"]:  # two slides per patient (patient_id), never split
            test = {(int(s[-3:]) - 1) // 2 for s in fold["test_slides"]}
            assert not test & {(int(s[-3:]) - 1) // 2 for s in fold["train_slides"]}
        row = rows[rows["backbone"] == backbone].iloc[0]
        auroc = res["results"][0]["summary"]["auroc"]
        assert row["auroc_mean"] == pytest.approx(auroc["mean"], abs=1e-4)
        truth = res["attention_vs_truth"]
        assert truth["slides"] == ["demo_002", "demo_004"]  # the abnormal slides
        assert row["attention_auroc_mean"] == pytest.approx(truth["auroc"]["mean"], abs=1e-4)
        out = results / "eval" / "demo_abnormal" / backbone / "abmil"
        attention = open_store(out / "attention.zarr")
        for slide in slides:
            feats = open_store(results / "features" / backbone / "cells" / f"{slide}.zarr")
            att = attention[slide]["attention"][:]
            assert att.shape == (1, feats["features"].shape[0])
            assert att.sum() == pytest.approx(1.0, abs=1e-4)
            assert (attention[slide]["rows"][:] == feats["rows"][:]).all()
            assert (out / "heatmap" / f"{slide}.png").stat().st_size > 5000
            assert (out / "montage" / f"{slide}.png").is_file()
    assert (results / "eval" / "demo_abnormal" / "slide_auroc.png").stat().st_size > 5000


def test_every_job_logged_one_mlflow_run(results, runs):
    runs = list(runs.values())
    stages = sorted(r.data.tags["cytofm.stage"] for r in runs)
    # 5 slides x (demo_slide, tile, cells) + sheet + crops + import + detection_eval
    # + pretrain + pretrain_probe + 2 backbones (backbone) + 2 backbones x (the crops and one
    # job for the 5 slides) (embed)
    # + 2 x 4 protocols (evaluate) + eval_summary + 2 backbones x abmil (mil) + mil_summary
    # + 2 backbones x the unlabelled pretraining slide (predict) + predict_table + model_card
    # + 2 backbones x the cell task's linear head (cell_head) + report
    # + the leave-one-stain-out task (2 backbones x linear, knn; its eval_summary)
    # + 2 backbones x the batch-leak probe (robustness)
    assert len(runs) == 19 + 2 + 2 + 4 + 8 + 1 + 2 + 1 + 2 + 1 + 1 + 2 + 1 + 5 + 2, stages
    assert stages.count("embed") == 4
    assert stages.count("robustness") == 2
    assert stages.count("model_card") == 1 and stages.count("cell_head") == 2
    assert stages.count("predict") == 2 and stages.count("predict_table") == 1
    assert stages.count("backbone") == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    tile = next(r for r in runs if r.data.tags["cytofm.stage"] == "tile")
    assert tile.data.tags["snakemake.rule"] == "tile"
    assert "foreground_fraction" in tile.data.metrics and "slide_mpx_per_s" in tile.data.metrics
    assert "slide_path" not in tile.data.params  # file names stay out unless opted in
    assert not (results / "mlflow.db").exists()  # everything went to the server


def test_registered_models_load_back_from_the_server_to_the_same_outputs(
    results, runs, mlflow_server
):
    """The pretrained backbone and each backbone's final slide model are registered on the
    server by their jobs' runs; loaded back with ``mlflow.pyfunc`` they give the features the
    workflow stored and the probabilities its ``predict`` rule wrote."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from cytofm.store import open_store

    client = MlflowClient(mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mine = {r.info.run_id: r for r in runs.values()}

    def version_of(name):  # other tests on this server register the same names
        found = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id in mine]
        assert len(found) == 1, (name, found)
        return found[0]

    bb = version_of("cytofm_vit_demo")
    assert mine[bb.run_id].data.tags["cytofm.stage"] == "pretrain"
    backbone = mlflow.pyfunc.load_model(f"models:/cytofm_vit_demo/{bb.version}")
    images = open_store(results / "cells" / "demo_001.zarr")["images"][:]
    stored = open_store(results / "features" / "cytofm" / "cells" / "demo_001.zarr")["features"]
    served = backbone.predict(images)
    assert served.shape == stored.shape and len(images) > 0
    assert np.allclose(served.astype(np.float16), stored[:], rtol=1e-2, atol=1e-2)

    prediction = json.loads((results / "predict" / "demo_abnormal" / "cytofm" / "demo_000.json")
                            .read_text())  # fmt: skip
    heads = {b: version_of(f"demo_abnormal.{b}.abmil") for b in ("cytofm", "random")}
    assert {mine[v.run_id].data.tags["cytofm.stage"] for v in heads.values()} == {"mil"}
    head = mlflow.pyfunc.load_model(f"models:/demo_abnormal.cytofm.abmil/{heads['cytofm'].version}")
    bag = open_store(results / "features" / "cytofm" / "cells" / "demo_000.zarr")["features"][:]
    probs = head.predict(np.asarray(bag, np.float32))
    expected = [prediction["probabilities"][c] for c in probs.columns]
    assert np.allclose(probs.to_numpy()[0], expected, atol=1e-5)
    # the cell task's head: each cell's classes, as the predict job wrote them
    linear = version_of("demo_cells.cytofm.linear")
    cells = mlflow.pyfunc.load_model(f"models:/demo_cells.cytofm.linear/{linear.version}")
    saved = np.load(results / "predict" / "demo_abnormal" / "cytofm" / "demo_000.attention.npz")
    served = cells.predict(np.asarray(bag, np.float32))
    assert list(served.columns) == list(saved["cell_classes"])
    assert np.allclose(served.to_numpy(), saved["cell_proba"], atol=1e-5)


def test_lineage_traces_a_result_to_its_backbone_run_and_slides(results, runs, mlflow_server):
    """From an evaluation JSON, follow job ids through the server: evaluate -> embed ->
    pretrain -> cells -> tile -> the slide's checksum; every run shares one invocation id."""
    from mlflow.tracking import MlflowClient

    from cytofm.provenance import file_sha256

    assert len({r.data.tags["cytofm.invocation_id"] for r in runs.values()}) == 1
    result = json.loads((results / "eval" / "demo_cells" / "cytofm" / "linear.json").read_text())
    evaluate = runs[result["provenance"]["job_id"]]
    assert evaluate.data.tags["snakemake.wildcard.protocol"] == "linear"
    features = runs[evaluate.data.tags["cytofm.input.features.job_id"]]
    assert features.data.tags["cytofm.stage"] == "embed"
    assert features.data.tags["snakemake.wildcard.backbone"] == "cytofm"
    pretrain = runs[features.data.tags["cytofm.input.pretrained.job_id"]]
    assert pretrain.data.tags["cytofm.stage"] == "pretrain"
    weights = results / "pretrain" / "cytofm_vit_demo" / "backbone" / "model.safetensors"
    assert features.data.tags["cytofm.input.pretrained.sha256"] == file_sha256(weights)

    tags = pretrain.data.tags  # one input store: '.job_id'; several: '.job_ids'
    ids = tags.get("cytofm.input.stores.job_ids") or tags["cytofm.input.stores.job_id"]
    cells = [runs[i] for i in ids.split(",")]
    pretraining_slides = ["demo_000"]  # the tiny sheet's one pretraining slide
    assert sorted(r.data.tags["snakemake.wildcard.slide"] for r in cells) == pretraining_slides
    for run in cells:
        tile = runs[run.data.tags["cytofm.input.tiles.job_id"]]
        slide = results / "demo" / "slides" / f"{tile.data.tags['snakemake.wildcard.slide']}.tif"
        assert tile.data.tags["cytofm.slide_sha256"] == file_sha256(slide)

    # every job's run is nested under the one parent run of the invocation, closed at its end
    (invocation,) = {r.data.tags["cytofm.invocation_id"] for r in runs.values()}
    client = MlflowClient(mlflow_server)
    parents = client.search_runs(
        [evaluate.info.experiment_id],
        filter_string=(
            f"tags.`cytofm.invocation_id` = '{invocation}' and tags.`cytofm.role` = 'invocation'"
        ),
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parents[0].info.run_id}
    assert {r.data.tags["mlflow.source.type"] for r in runs.values()} == {"JOB"}
    assert evaluate.data.tags["mlflow.source.name"] == "snakemake rule evaluate"

    # the same chain is written into the outputs, and the server serves lineage.json
    store_prov = json.loads(
        (results / "features" / "cytofm" / "datasets" / "demo_cells.zarr" / "zarr.json").read_text()
    )["attributes"]["provenance"]
    assert store_prov["job_id"] == features.data.tags["cytofm.job_id"]
    assert store_prov["inputs"]["pretrained"][0]["job_id"] == pretrain.data.tags["cytofm.job_id"]
    # pretraining logs live (its curves are watched as it trains): its run id is known at once
    backbone_prov = json.loads(weights.with_name("config.json").read_text())["provenance"]
    assert backbone_prov["mlflow_run_id"] == pretrain.info.run_id
    assert not (results / "mlflow-spool").exists()  # every spooled run was sent
    names = [a.path for a in client.list_artifacts(evaluate.info.run_id)]
    assert "lineage.json" in names


REPORT_FIGURES = [
    "demo_cells_fewshot.png",
    "demo_cells_fractions.png",
    "demo_cells_confusion.png",
    "demo_cells_embedding_cytofm.png",
    "demo_cells_embedding_random.png",
    "demo_abnormal_auroc.png",
    "demo_cells_reliability.png",
    "demo_abnormal_reliability.png",
    "demo_cells_batch.png",
    "demo_stain_out_reliability.png",
    "demo_stain_out_confusion.png",
    "slides_embedding_cytofm.png",
    "slides_embedding_random.png",
    "pretrain_cytofm_vit_demo.png",
    *[f"qc/demo_00{i}{s}.png" for i in range(5) for s in ("", ".cells", ".detection")],
    *[
        f"mil/demo_abnormal/{b}/{kind}_demo_00{i}.png"
        for b in ("cytofm", "random")
        for kind in ("heatmap", "montage")
        for i in range(1, 5)
    ],
    *[f"predict/demo_abnormal/{b}_demo_000.png" for b in ("cytofm", "random")],
]


def test_report_has_every_figure_and_table(results, runs):
    report = results / "report"
    tables = sorted(p.name for p in (report / "tables").iterdir() if not p.name.startswith("."))
    assert tables == sorted(
        [
            f"{t}.{x}"
            for t in ("demo_cells", "demo_abnormal", "demo_stain_out", "overview")
            for x in ("csv", "md")
        ]
        + ["detection.csv", "predictions_demo_abnormal.csv", "demo_cells_hierarchy.csv"]
        + [f"{t}_calibration.csv" for t in ("demo_cells", "demo_abnormal", "demo_stain_out")]
        + ["demo_cells_batch.csv", "demo_stain_out_held_out.csv"]
    )
    # the unlabelled pretraining slide's predictions, with its cells by class
    predicted = pd.read_csv(report / "tables" / "predictions_demo_abnormal.csv")
    assert set(predicted["slide_id"]) == {"demo_000"} and len(predicted) == 2
    assert {"p_1", "cells_dysplastic", "attention_dysplastic"} <= set(predicted.columns)
    # the QC section's detection table: one row per slide, each with cells and its stain map
    detection = pd.read_csv(report / "tables" / "detection.csv")
    assert len(detection) == len(list((results / "cells").glob("*.zarr")))
    assert (detection["status"] == "ok").all() and (detection["cells"] > 0).all()
    assert set(detection["chromatin_map"]) == {"min_od"}
    figures = sorted(
        p.relative_to(report / "figures").as_posix() for p in (report / "figures").rglob("*.png")
    )
    assert figures == sorted(REPORT_FIGURES)
    page = (report / "index.html").read_text()
    assert 'id="predictions-demo_abnormal"' in page
    assert 'id="tree-demo_cells"' in page and "sensitivity @ 95% spec." in page
    assert 'id="calibration-demo_cells"' in page and 'id="calibration-demo_abnormal"' in page
    assert 'id="batch-demo_cells"' in page and 'id="held-out-demo_stain_out"' in page
    held = pd.read_csv(report / "tables" / "demo_stain_out_held_out.csv")
    assert {"held out: lab_a", "held out: lab_b", "held out: lab_c"} <= set(held.columns)
    assert len(held) == 4  # linear and kNN x 2 backbones
    linked = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(linked) == sorted(f"figures/{f}" for f in REPORT_FIGURES)  # every figure shown
    for f in REPORT_FIGURES:
        assert (report / "figures" / f).stat().st_size > 2000, f
    # and logged to the report job's MLflow run
    run = next(r for r in runs.values() if r.data.tags["cytofm.stage"] == "report")
    assert run.data.metrics["n_figures"] == len(REPORT_FIGURES)


def _result_jsons(results: Path, task: str) -> list[Path]:
    """A task's result files (not its backbones' robustness.json)."""
    return sorted(
        p for p in (results / "eval" / task).glob("*/*.json") if p.name != "robustness.json"
    )


def test_report_tables_equal_the_result_jsons(results):
    """Every number of every report table is the one its result JSON holds."""
    import pandas as pd

    from cytofm.report.tables import setting_label

    checked = 0
    for task, metric in (("demo_cells", "balanced_accuracy"), ("demo_abnormal", "auroc")):
        table = pd.read_csv(results / "report" / "tables" / f"{task}.csv").set_index("setting")
        for path in _result_jsons(results, task):
            res = json.loads(path.read_text())
            for block in res["results"]:
                _, label = setting_label(res["protocol"], block["shots"], block.get("fraction"))
                s = block["summary"][metric]
                got = table.loc[label]
                b = res["backbone"]
                assert got[f"{b}_mean"] == pytest.approx(s["mean"], abs=1e-4), (task, label, b)
                assert got[f"{b}_std"] == pytest.approx(s["std"], abs=1e-4)
                assert got[f"{b}_ci_low"] == pytest.approx(s["ci95"][0], abs=1e-4)
                assert got[f"{b}_ci_high"] == pytest.approx(s["ci95"][1], abs=1e-4)
                checked += 1
        # a backbone is marked best only when its paired differences exclude zero
        comp = pd.read_csv(results / "eval" / task / "comparisons.csv")
        best = table[[c for c in table if c.endswith("_mean")]].max(axis=1)
        for label, row in table.iterrows():
            winner = row["best"] if isinstance(row["best"], str) else ""
            pairs = comp[
                (comp.protocol == row["protocol"])
                & (comp.block == row["block"])
                & (comp.metric == metric)
            ]
            assert len(pairs) == 1 and isinstance(row["verdict"], str), label  # vs the control
            if winner:
                assert row[f"{winner}_mean"] == best[label]
                assert (pairs[pairs.backbone == winner].ci_low > 0).all()
                assert (pairs[pairs.versus == winner].ci_high < 0).all()
            else:
                assert "no difference" in row["verdict"]
    assert (
        checked == 2 * (1 + 1 + 2 + 2 + 2) + 2
    )  # linear, knn, 2 fewshot, 2 lora, 2 fractions; abmil


def test_label_tree_metrics_agree_with_the_results(results):
    """The demo task's tree: every result block scored at every level, and the last level
    (the classes themselves) is the balanced accuracy the result JSON reports."""
    tree = pd.read_csv(results / "eval" / "demo_cells" / "hierarchy.csv")
    for path in _result_jsons(results, "demo_cells"):
        res = json.loads(path.read_text())
        for block in res["results"]:
            key = (
                f"fraction={block['fraction']:g}"
                if block.get("fraction") is not None
                else (f"shots={block['shots']}" if block["shots"] is not None else "all")
            )
            rows = tree[
                (tree.backbone == res["backbone"])
                & (tree.protocol == res["protocol"])
                & (tree.block == key)
            ].set_index("metric")
            assert {"level1_balanced_accuracy", "level2_macro_f1"} <= set(rows.index), key
            assert {"sensitivity_at_90_specificity", "sensitivity_at_95_specificity"} <= set(
                rows.index
            )
            fine = rows.loc["level3_balanced_accuracy"]
            assert fine["mean"] == pytest.approx(
                block["summary"]["balanced_accuracy"]["mean"], abs=1e-4
            ), (res["backbone"], res["protocol"], key)
            # an interval with width (the tiny run's few-shot ones can span [0, 1])
            assert 0 < fine["ci95_high"] - fine["ci95_low"] <= 1


def test_report_renders_in_headless_chromium(results, tmp_path):
    """The page opens in a browser and every image on it loads."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    page = (results / "report" / "index.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", page],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    n_images = len(re.findall(r"<img ", (results / "report" / "index.html").read_text()))
    assert f'data-images="{n_images}"' in dom, dom[:500]
    assert 'data-broken-images="0"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, "--window-size=1280,2400", f"--screenshot={shot}", page],
        capture_output=True,
        timeout=180,
    )
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one


def test_snakemake_report(results, tmp_path):
    """`snakemake --report` collects the outputs marked with report() and their captions."""
    out = tmp_path / "report.html"
    proc = snakemake("--config", f"results={results}", "--report", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text(errors="replace")
    assert out.stat().st_size > 100_000
    assert "cytofm results report" in text  # the index.rst caption


def test_rerun_has_nothing_to_do(results):
    proc = snakemake("-n", "--config", f"results={results}")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run ({} when nothing to do)."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats:"):
            in_table = True
            continue
        parts = line.split()
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


def _add_slide_sheet(results, tmp_path, split):
    """A sample sheet with one new slide (a copy of a demo slide under a new id)."""
    shutil.copy(results / "demo" / "slides" / "demo_000.tif", tmp_path / "new.tif")
    sheet = tmp_path / "slides.tsv"
    sheet.write_text(f"slide_id\tpath\tmpp\tpatient_id\tsplit\nnew1\tnew.tif\t\tP9\t{split}\n")
    return sheet


def test_new_slide_plans_only_its_own_jobs(results, tmp_path):
    """Adding a slide outside the pretraining splits runs its tiling, cells and embedding
    (one per backbone), its predictions, the prediction table and the report: pretraining and
    every evaluation stay as they are."""
    sheet = _add_slide_sheet(results, tmp_path, "test")
    proc = snakemake("-n", "--config", f"results={results}", f"samples={sheet}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == {
        **{"tile": 1, "cells": 1, "embed_slides": 2, "report": 1, "all": 1},
        **{"predict": 2, "predict_table": 1},  # it has no label: each backbone's model scores it
    }


def test_a_lora_setting_reruns_only_the_lora_jobs_and_what_reads_them(results, tmp_path):
    """Each evaluation job gets only the settings its protocol reads: a new LoRA rank plans the
    LoRA job of each backbone with a network, the task's summary, the model card and the
    report; the linear, kNN and few-shot jobs, the robustness probe and every MIL job stay as
    they are."""
    tiny = yaml.safe_load(TINY.read_text())
    rank = tiny.get("evaluate", {}).get("lora", {}).get("rank", 2) + 2
    overlay = tmp_path / "lora.yaml"
    overlay.write_text(yaml.safe_dump({"evaluate": {"lora": {"rank": rank}}}))
    proc = snakemake(
        "-n", "--configfile", str(TINY), str(overlay), "--config", f"results={results}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == {
        **{"evaluate": 2, "eval_summary": 1, "model_card": 1, "report": 1, "all": 1}
    }  # the model card shows the backbone's results
    planned = re.findall(
        r"wildcards: task=([^,\s]+), backbone=([^,\s]+), protocol=(\S+)", proc.stdout
    )
    assert sorted(planned) == [
        ("demo_cells", "cytofm", "lora"), ("demo_cells", "random", "lora")
    ]  # fmt: skip


def test_unlabelled_slides_get_predictions_and_heatmaps(results, tmp_path):
    """Slides without a label for the slide task (two new ones, and the demo's unlabelled
    pretraining slide) are scored by each backbone's final model: probabilities, attention
    over their cells, a heatmap and one table; a third new slide then plans only its own jobs,
    its predictions and the table (and the report). The first new slide's row names a table of
    its true cells: its detections are scored in QC and the report, as the demo slides' are."""
    work = tmp_path / "results"
    shutil.copytree(results, work, ignore=shutil.ignore_patterns("mlflow*", "logs"))
    demo = pd.read_csv(work / "demo" / "slides.tsv", sep="\t", dtype=str, keep_default_na=False)
    header = "slide_id\tpath\tmpp\tpatient_id\tsplit\tcell_truth\n"
    shutil.copy(work / "demo" / "ground_truth" / "demo_000.tsv", tmp_path / "new0.truth.tsv")
    rows = []
    for i in range(3):
        shutil.copy(work / "demo" / "slides" / f"demo_00{i}.tif", tmp_path / f"new{i}.tif")
        truth = "new0.truth.tsv" if i == 0 else ""
        rows.append(f"new{i}\tnew{i}.tif\t\tP9{i}\ttest\t{truth}\n")
    two, three = tmp_path / "two.tsv", tmp_path / "three.tsv"
    two.write_text(header + "".join(rows[:2]))
    three.write_text(header + "".join(rows))
    proc = snakemake("--config", f"results={work}", f"samples={two}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    unlabelled = {*demo.loc[demo["abnormal"] == "", "slide_id"], "new0", "new1"}
    table = pd.read_csv(work / "predict" / "demo_abnormal" / "predictions.csv")
    assert set(table["slide_id"]) == unlabelled and len(table) == 2 * len(unlabelled)
    assert (table[["p_0", "p_1"]].sum(axis=1) - 1).abs().max() < 1e-5
    # each slide's cells by the cell task's classes (the demo's cell classes)
    kinds = [f"cells_{c}" for c in ("dysplastic", "koilocyte", "lymphocyte", "squamous")]
    assert (table[kinds].sum(axis=1) - 1).abs().max() < 1e-6
    for b in ("cytofm", "random"):
        for s in ("new0", "new1"):
            out = work / "predict" / "demo_abnormal" / b
            assert (out / f"{s}.png").stat().st_size > 1000
            att = np.load(out / f"{s}.attention.npz")
            assert len(att["attention"]) > 0 and abs(att["attention"].sum() - 1) < 1e-4
    # the same image and truth as demo_000: the same detection figures, in QC and the report
    scored = json.loads((work / "qc" / "detection.json").read_text())["per_slide"]
    for key in ("recall", "precision", "n_true", "tp"):
        assert scored["new0"][key] == scored["demo_000"][key], key
    assert "new1" not in scored and scored["new0"]["tolerance_um"] > 0
    assert (work / "qc" / "detection" / "new0.png").stat().st_size > 10_000
    page = (work / "report" / "index.html").read_text()
    assert "<th>recall</th>" in page
    qc = page[page.index('<h2 id="qc">') :]
    row = qc[qc.index("<th>new0</th>") :].split("</tr>")[0]
    assert f"<td>{scored['new0']['recall']:.3f}</td>" in row
    assert "Recall, precision and F1 of the classical detector" in qc
    proc = snakemake("-n", "--config", f"results={work}", f"samples={three}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == {
        **{"tile": 1, "cells": 1, "embed_slides": 2, "predict": 2, "predict_table": 1},
        **{"report": 1, "all": 1},
    }


def test_more_pretraining_seeds_add_checkpoints_and_keep_the_first(results, tmp_path):
    """``pretrain.seeds: [0]`` -> ``[0, 1]`` on a finished run: one more pretraining job and
    its backbones (``cytofm_seed1`` and its random control) are planned, nothing of the first
    checkpoint is; the cell task's summary and comparisons, made for real, pool the two
    checkpoints and say so (the report's wording on them: tests/test_checkpoints.py)."""
    work = tmp_path / "results"
    shutil.copytree(results, work, ignore=shutil.ignore_patterns("mlflow*", "logs"))
    overlay = tmp_path / "seeds.yaml"
    overlay.write_text(yaml.safe_dump({"pretrain": {"seeds": [0, 1]}}))
    args = ("--configfile", str(TINY), str(overlay), "--config", f"results={work}")
    proc = snakemake("-n", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["pretrain"] == 1 and jobs["pretrain_probe"] == 1 and jobs["backbone"] == 2
    planned = set(re.findall(r"backbone=(\w+)", proc.stdout))
    assert planned == {"cytofm_seed1", "random_seed1"}, planned
    kept = [
        work / "pretrain" / "cytofm_vit_demo" / "backbone" / "config.json",
        work / "eval" / "demo_cells" / "cytofm" / "linear.json",
        work / "eval" / "demo_cells" / "random" / "lora.json",
    ]
    before = [f.stat().st_mtime_ns for f in kept]
    task = work / "eval" / "demo_cells"
    # the cell task's summary alone. The copy has no Snakemake metadata, whose record of the
    # summary's inputs would rerun it for the new ones (as it does in the run's own folder):
    # here it is asked for (-R). "-p" ends --configfile's list: the files are targets.
    targets = (str(task / "summary.csv"), str(task / "comparisons.csv"))
    proc = snakemake(*args[:3], "-p", *targets, "-R", "eval_summary", *args[3:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [f.stat().st_mtime_ns for f in kept] == before
    assert (task / "random_seed1" / "lora.json").is_file()
    summary = pd.read_csv(task / "summary.csv")
    scored = summary[summary["skipped"].isna()]
    assert set(scored["backbone"]) == {"cytofm", "random"}
    assert (scored["n_checkpoints"] == 2).all()
    assert set(scored["checkpoints"]) == {"cytofm cytofm_seed1", "random random_seed1"}
    compared = pd.read_csv(task / "comparisons.csv")
    assert len(compared) and (compared["n_checkpoints"] == 2).all()
    assert set(compared["backbone"]) == {"cytofm"}


def test_cli_predict_gives_the_workflows_prediction(results, tmp_path):
    """`cytofm predict` takes one slide through tiling, cells, embedding and a final model
    outside Snakemake, and gets what the workflow's predict job got for it."""
    demo = pd.read_csv(results / "demo" / "slides.tsv", sep="\t", dtype=str, keep_default_na=False)
    sid = demo.loc[demo["abnormal"] == "", "slide_id"].iloc[0]
    cmd = [
        str(Path(sys.executable).with_name("cytofm")),
        "predict",
        *("--model", str(results / "eval" / "demo_abnormal" / "cytofm" / "abmil" / "model")),
        *("--backbone", str(results / "backbones" / "cytofm")),
        *("--slide", str(results / "demo" / "slides" / f"{sid}.tif"), "--slide-id", sid),
        *("--config", str(TINY), "--out", str(tmp_path)),
        *("--cell-head", str(results / "eval" / "demo_cells" / "cytofm" / "linear_head")),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = json.loads((tmp_path / "prediction.json").read_text())
    job = json.loads((results / "predict" / "demo_abnormal" / "cytofm" / f"{sid}.json").read_text())
    assert mine["n_cells"] == job["n_cells"] > 0
    assert mine["probabilities"] == pytest.approx(job["probabilities"], abs=1e-5)
    assert mine["cells"]["fraction"] == pytest.approx(job["cells"]["fraction"], abs=1e-6)
    assert (tmp_path / "heatmap.png").is_file()


def test_new_pretraining_slide_retriggers_pretraining(results, tmp_path):
    """A new slide in a pretraining split changes pretraining's input set, so it reruns."""
    sheet = _add_slide_sheet(results, tmp_path, "train")
    proc = snakemake("-n", "--config", f"results={results}", f"samples={sheet}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["pretrain"] == 1 and jobs["tile"] == 1 and jobs["cells"] == 1


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (  # the kNN jobs of both tasks (not linear, few-shot or LoRA), the robustness index
            # (its k), and the backbone's model card, which shows the results
            {"knn": {"k": 5}},
            {"evaluate": 4, "eval_summary": 2, "robustness": 2, "model_card": 1, "report": 1}
            | {"all": 1},
        ),
        (  # and the predictions of the models it retrains
            {"mil": {"lr": 0.001}},
            {"mil": 2, "mil_summary": 1, "predict": 2, "predict_table": 1, "model_card": 1}
            | {"report": 1, "all": 1},
        ),
    ],
)
def test_evaluation_settings_reembed_nothing(results, tmp_path, override, expected):
    """Changing evaluation settings reruns only the evaluations that read them (and the report);
    a MIL setting only MIL and the predictions of its final models."""
    import yaml
    from snakemake.utils import update_config

    cfg = yaml.safe_load(TINY.read_text())
    update_config(cfg["evaluate"], override)
    changed = tmp_path / "c.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe), "-n", "--cores", "2", "--configfile", str(changed)]
    proc = subprocess.run(
        [*cmd, "--config", f"results={results}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == expected


def test_exports_run_alone_and_hold_the_stores_coordinates(results, tmp_path):
    """README's `export:` recipe plans the export jobs only (one GeoJSON per slide, one HDF5
    pair per slide and backbone); a GeoJSON and a feature file asked for as targets hold the
    cell store's centres (QuPath's level-0 pixels) and the feature store's rows."""
    import h5py
    import shapely

    from cytofm.store import open_store

    overlay = tmp_path / "export.yaml"
    overlay.write_text(yaml.safe_dump({"export": {"geojson": True, "hdf5": True}}))
    proc = snakemake(
        "-n", "--configfile", str(TINY), str(overlay), "--config", f"results={results}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_slides = len(list((results / "cells").glob("*.zarr")))
    jobs = planned_jobs(proc.stdout)
    assert jobs == {"export_geojson": n_slides, "export_features": 2 * n_slides, "all": 1}
    geo = results / "export" / "geojson" / "demo_000.geojson"
    h5 = results / "export" / "trident" / "random" / "cells" / "demo_000.h5"
    # "-p" ends --configfile's list, so the two files are read as targets
    proc = snakemake("-p", str(geo), str(h5), "--config", f"results={results}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = open_store(results / "cells" / "demo_000.zarr")
    coords = np.asarray(cells["coords"][:], float)
    doc = json.loads(geo.read_text())
    det = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    centroids = [shapely.from_geojson(json.dumps(f["geometry"])).centroid for f in det]
    assert np.abs(np.array([[c.x, c.y] for c in centroids]) - coords).max() < 0.05
    feats = open_store(results / "features" / "random" / "cells" / "demo_000.zarr")
    with h5py.File(h5) as f:
        assert np.array_equal(f["features"][:], feats["features"][:].astype(np.float32))
        assert np.allclose(f["centres"][:], coords[feats["rows"][:]])
    assert (h5.parent.parent.parent.parent / "stamp" / "random" / "cells" / "demo_000.h5").is_file()


def test_slide_without_mpp_fails_alone(results, tmp_path):
    """--keep-going: the slide lacking a resolution fails its own job, the other finishes."""
    good = tmp_path / "good.tif"
    shutil.copy(results / "demo" / "slides" / "demo_000.tif", good)
    tifffile.imwrite(tmp_path / "nores.tif", np.full((600, 600, 3), 235, np.uint8), tile=(256, 256))
    (tmp_path / "slides.tsv").write_text(
        "slide_id\tpath\tmpp\ngood\tgood.tif\t\nnores\tnores.tif\t\n"
    )
    out = tmp_path / "results"
    user_config = tmp_path / "config.yaml"
    user_config.write_text(
        f"results: {out}\nsamples: {tmp_path / 'slides.tsv'}\ndemo:\n  enabled: false\n"
        "pretrain:\n  enabled: false\n"
    )
    proc = snakemake("--keep-going", "--configfile", str(user_config))
    assert proc.returncode != 0
    assert (out / "cells" / "good.zarr" / "zarr.json").is_file()
    assert not (out / "tiles" / "nores.zarr").exists()
    log = (out / "logs" / "tile" / "nores.log").read_text()
    assert "slide 'nores'" in log and "'mpp' column" in log


@pytest.fixture
def http_server(tmp_path):
    """A read-only HTTP server on 127.0.0.1 serving a folder outside the working directory."""
    root = tmp_path / "remote"
    root.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield root, url
    proc.terminate()
    proc.wait(timeout=20)


def test_slides_behind_a_storage_plugin_are_tiled(http_server, synthetic_slide, tmp_path):
    """A sheet row that names a URL: Snakemake's storage plugin (http here; s3, gcs ... alike)
    fetches the slide for the job, tile and cells read that copy, and the copy is removed."""
    from cytofm.provenance import file_sha256
    from cytofm.store import open_store

    root, url = http_server
    shutil.copy(synthetic_slide[0], root / "case_remote.tif")
    sheet = tmp_path / "slides.tsv"
    sheet.write_text(f"slide_id\tpath\tmpp\nremote1\t{url}/case_remote.tif\t0.25\n")
    cfg = tmp_path / "my_config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "results": str(tmp_path / "results"),
                "samples": str(sheet),
                "demo": {"enabled": False},
                "pretrain": {"enabled": False},
            }
        )
    )
    exe = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run(
        [str(exe), "--cores", "2", "--configfile", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "results"
    tiles = open_store(out / "tiles" / "remote1.zarr")
    cells = open_store(out / "cells" / "remote1.zarr")
    assert tiles["boxes"].shape[0] > 0 and cells["images"].shape[0] >= 20
    assert tiles.attrs["provenance"]["slide_sha256"] == file_sha256(root / "case_remote.tif")
    assert not list((REPO / ".snakemake" / "storage").rglob("case_remote.tif"))  # copy removed
