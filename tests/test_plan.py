"""The run plan (cytofm/plan.py) and output paths (cytofm/paths.py), without Snakemake."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config, validate

from cytofm.errors import ConfigError, InputDataError
from cytofm.paths import Paths
from cytofm.plan import Plan

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def _plan(overlay=None, **kw) -> Plan:
    config = copy.deepcopy(BASE)
    update_config(config, copy.deepcopy(overlay or {}))
    return Plan.build(config, validate=validate, **kw)


def test_demo_plan():
    plan = _plan({"results": "out"})
    assert len(plan.slide_ids) == 72 and plan.demo_ids == plan.slide_ids
    # the first 8 slides feed pretraining (split train); the rest are the slide task's cohort
    assert plan.pretrain_slides == [f"demo_{i:03d}" for i in range(8)]
    assert plan.pretrain_stores == [f"out/cells/demo_{i:03d}.zarr" for i in range(8)]
    assert plan.knn_store == ["out/datasets/demo_cells.zarr"]
    assert [r["slide_id"] for r in plan.cohort("demo_abnormal")] == plan.slide_ids[8:]
    assert set(plan.datasets) == {"demo_cells"}
    assert set(plan.backbones) == {"cytofm", "random", "morphometry"}
    assert plan.held_out() == {}  # pretraining reads slides, not the task's dataset
    targets = plan.targets()
    assert len(targets) == len(set(targets))
    assert all(t.startswith("out/") for t in targets)
    # per slide: tiles, QC, cells; three backbones' cell features in embedding jobs of 64
    # slides (two manifests each: 64 + 8 slides); the dataset's features;
    # the backbone and its probe; 4 protocols x 2 backbones and 3 (no LoRA) for morphometry,
    # 3 MIL results, 2 summaries, report, sheet, detection QC and its pictures; the 8
    # unlabelled pretraining slides' predictions (json, attention, heatmap) per backbone and
    # the prediction table;
    # the model card; the cell task's linear head per backbone; the leave-one-stain-out task
    # (linear, knn x 3 backbones, its summary, no linear head) and demo_cells' batch-leak
    # probe per backbone
    assert len(targets) == (
        72 * 3 + 3 * 2 + 1 + 3 + 2 + 8 + 3 + 3 + 2 + 1 + 3 + 8 * 3 * 3 + 1 + 1 + 3 + 7 + 3
    )
    assert plan.shard_names() == ["00000", "00001"]
    assert plan.shard_slides("00001") == plan.slide_ids[64:]
    assert plan.shard_outputs("random", "cells", "00001")[0] == (
        "out/features/random/cells/demo_064.zarr"
    )
    assert "out/features/cytofm/cells/shards/00001.json" in targets
    assert plan.mil_inputs("demo_abnormal", "random")["features"] == [
        "out/features/random/cells/shards/00000.json",
        "out/features/random/cells/shards/00001.json",
    ]
    assert plan.mil_features("demo_abnormal", "random")[0] == (
        "out/features/random/cells/demo_008.zarr"
    )
    with pytest.raises(InputDataError, match="shard '00002' does not exist"):
        plan.shard_slides("00002")
    assert "out/qc/detection" in targets and len(plan.truth_slides) == 72
    assert "out/eval/demo_cells/morphometry/lora.json" not in targets
    assert "out/eval/demo_cells/cytofm/robustness.json" in targets
    assert "out/eval/demo_stain_out/random/knn.json" in targets
    assert "out/eval/demo_stain_out/cytofm/linear_head" not in targets
    assert "out/pretrain/cytofm_vit_demo/hub" in targets
    assert "out/eval/demo_cells/cytofm/linear_head" in targets
    assert plan.predict_inputs("demo_abnormal", "random", "demo_000")["cell_head"] == (
        "out/eval/demo_cells/random/linear_head"
    )
    assert plan.predict_slides("demo_abnormal") == plan.slide_ids[:8]
    assert "out/predict/demo_abnormal/predictions.csv" in targets
    assert "out/eval/demo_cells/random/lora.json" in targets
    assert "out/eval/demo_abnormal/cytofm/abmil.json" in targets
    assert plan.evaluate_inputs("demo_cells", "cytofm", "knn") == {
        "dataset": "out/datasets/demo_cells.zarr",
        "pretrained": "out/pretrain/cytofm_vit_demo/backbone",
        "features": "out/features/cytofm/datasets/demo_cells.zarr",
    }


def test_paths_are_patterns_without_arguments():
    p = Paths("r")
    assert p.tiles() == "r/tiles/{slide}.zarr" and p.tiles("s1") == "r/tiles/s1.zarr"
    assert p.features() == "r/features/{backbone}/{kind}/{source}.zarr"
    assert p.result("t", "b", "knn") == "r/eval/t/b/knn.json"
    assert p.abmil("t", "b") == "r/eval/t/b/abmil.json"
    assert p.log("tile", "{slide}") == "r/logs/tile/{slide}.log"
    assert p.log("report") == "r/logs/report.log"


def test_resources_defaults_overrides_and_gpus():
    plan = _plan({"resources": {"gpu": False, "tile": {"threads": 3, "mem_mb": 999}}})
    assert (plan.threads("tile"), plan.mem_mb("tile"), plan.runtime("tile")) == (3, 999, 120)
    assert plan.threads("embed") == 1 and plan.gpus("pretrain") == 0
    gpu = _plan({"resources": {"gpu": True, "pretrain": {"gpus": 4}}})
    assert gpu.threads("embed") == 4 and gpu.gpus("pretrain") == 4 and gpu.gpu == 1
    # auto: jobs sent to a cluster ask for a GPU; a CPU-only machine run locally does not
    assert _plan(local=False).gpu == 1 and _plan(local=True, gpus_here=0).gpu == 0
    with pytest.raises(ConfigError, match="'gpus' is read for pretrain only"):
        _plan({"resources": {"embed": {"gpus": 2}}})
    with pytest.raises(Exception, match="tiles"):
        _plan({"resources": {"tiles": {"threads": 2}}})  # no such rule


def test_pretraining_on_a_slide_tasks_cohort_is_refused():
    with pytest.raises(InputDataError, match="transductive"):
        _plan({"pretrain": {"splits": []}})  # all slides, the cohort included
    plan = _plan({"pretrain": {"splits": [], "transductive": True}})
    assert len(plan.pretrain_slides) == 72
    exposure = plan.mil_exposure("demo_abnormal", "cytofm")
    assert exposure["cohort_slides_pretrained_on"] == 64 and exposure["transductive"]


def test_old_keys_and_bad_references_fail_before_any_job():
    with pytest.raises(ConfigError, match=r"'pretrain\.steps' is now 'pretrain\.optim\.steps'"):
        _plan({"pretrain": {"steps": 3}})
    with pytest.raises(ConfigError, match="'cric' is not an imported dataset"):
        _plan({"evaluate": {"tasks": {"t": {"dataset": "cric"}}}})
    with pytest.raises(ConfigError, match="nothing to do"):
        _plan({"demo": {"enabled": False}})
    with pytest.raises(ConfigError, match="embed.sources"):
        _plan({"embed": {"sources": ["datasets"]}})  # the slide task needs cell features


def test_user_sheet_missing_files_and_dataset_tasks(tmp_path):
    slide = tmp_path / "a.tiff"
    slide.write_bytes(b"")
    sheet = tmp_path / "slides.tsv"
    sheet.write_text(
        "slide_id\tpath\tmpp\tsplit\tdx\n"
        f"a\t{slide}\t0.25\ttrain\t\n"
        f"b\t{tmp_path / 'gone.tiff'}\t\ttrain\t\n"
    )
    folder = tmp_path / "pbc"
    overlay = {
        "samples": str(sheet),
        "demo": {"enabled": False},
        "datasets": {"pbc": {"path": str(folder)}},
        "pretrain": {"sources": ["cells", "pbc"], "probe": {"dataset": "pbc"}},
        "evaluate": {"tasks": {"pbc": {"dataset": "pbc", "protocols": ["knn"]}}},
    }
    plan = _plan(overlay)
    assert plan.slide_ids == ["a", "b"] and plan.missing_slides == ["b"]
    assert any("not found: b" in note for note in plan.notes)
    assert plan.slide_mpp("a") == 0.25 and plan.slide_mpp("b") is None
    assert set(plan.tasks) == {"pbc"} and not plan.slide_tasks  # the demo's are left out
    stores = plan.pretrain_stores
    assert stores[-1] == "results/datasets/pbc.zarr" and len(stores) == 3
    # pretraining leaves out the test rows of the task evaluated on a dataset it reads
    assert list(plan.held_out()) == ["results/datasets/pbc.zarr"]
    assert plan.held_out()["results/datasets/pbc.zarr"][0]["name"] == "pbc"


@pytest.mark.parametrize(
    ("cell_task", "extra", "pattern"),
    [
        ("nope", {}, r"cell_task 'nope' is not a cell task of evaluate.tasks \(\['demo_cells', "),
        ("demo_cells", {"instances": "tiles"}, r"cell_task labels cells, but the task's bags"),
        ("demo_stain_out", {}, r"holds out each value of a column in turn"),
    ],
)
def test_a_slide_tasks_cell_task_must_be_a_cell_task_on_cells(cell_task, extra, pattern):
    overlay = {"embed": {"sources": ["cells", "tiles", "datasets"]}}
    task = {"cell_task": cell_task, **extra}
    overlay["evaluate"] = {"slide_tasks": {"demo_abnormal": task}}
    with pytest.raises(ConfigError, match=pattern):
        _plan({"results": "out", **overlay})


def test_planning_imports_no_heavy_library():
    """Every snakemake process reads the Snakefile and builds this plan (on SLURM, two per
    job): what common.smk imports must not pull in scikit-learn, zarr, torch, mlflow,
    OpenSlide, scipy or timm, which the jobs import where they use them (seconds per process
    otherwise)."""
    code = (
        "import sys, yaml\n"
        "from snakemake.utils import validate\n"
        "from cytofm.eval.protocols import PROTOCOLS\n"
        "from cytofm.hardware import visible_gpus\n"
        "from cytofm.plan import Plan\n"
        "from cytofm.provenance import INVOCATION_ENV\n"
        "from cytofm.sheet import is_remote\n"
        "from cytofm.tracking import end_invocation, flush_spool\n"
        f"Plan.build(yaml.safe_load(open({str(REPO / 'config.yaml')!r})), validate=validate)\n"
        "heavy = {'sklearn', 'zarr', 'torch', 'mlflow', 'openslide', 'scipy', 'timm'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _cohort_overlay(tmp_path, rows: str) -> dict:
    """A user sheet (slide a pretrained, the rest a slide task's cohort) and that task."""
    sheet = tmp_path / "slides.tsv"
    sheet.write_text("slide_id\tpath\tmpp\tsplit\tpatient_id\tdx\n" + rows)
    for name in ("a.tiff", "c.tiff", "d.tiff"):
        (tmp_path / name).write_bytes(b"")
    return {
        "samples": str(sheet),
        "demo": {"enabled": False},
        "pretrain": {"splits": ["train"]},
        "evaluate": {
            "slide_tasks": {
                "dx": {
                    "label": "dx",
                    "slides": "all",
                    "folds": 2,
                    "cell_task": "",
                    "truth_positive": [],
                    "classes": ["0", "1"],
                }
            }
        },
    }


def test_a_slide_file_under_two_ids_and_a_cohort_patients_other_slide_are_refused(tmp_path):
    """Checked on content, not names: a cohort slide whose file pretraining reads under
    another slide_id, or whose patient has a slide pretraining reads."""
    a, c, d = (tmp_path / n for n in ("a.tiff", "c.tiff", "d.tiff"))
    rows = (
        f"a\t{a}\t0.25\ttrain\tP1\t\n"
        f"b\t{tmp_path}/./a.tiff\t0.25\ttest\tP9\t1\n"  # a's file under another name
        f"c\t{c}\t0.25\ttest\tP1\t0\n"  # patient P1's other slide
        f"d\t{d}\t0.25\ttest\tP2\t1\n"
    )
    overlay = _cohort_overlay(tmp_path, rows)
    with pytest.raises(InputDataError) as err:
        _plan(overlay)
    msg = str(err.value)
    assert "slide task 'dx'" in msg and "'b' is the file of pretrained slide 'a'" in msg
    assert "'c' is of patient 'P1', whose slide 'a' pretraining reads" in msg
    assert "'d'" not in msg and "pretrain.transductive: true" in msg
    update_config(overlay, {"pretrain": {"transductive": True}})
    assert [r["slide_id"] for r in _plan(overlay).cohort("dx")] == ["b", "c", "d"]
    # without the shared file and patient the same sheet plans
    clean = rows.replace(f"{tmp_path}/./a.tiff", str(d)).replace("test\tP1", "test\tP3")
    assert _plan(_cohort_overlay(tmp_path, clean)).pretrain_slides == ["a"]


def test_two_names_for_one_dataset_are_refused(tmp_path):
    folder = tmp_path / "pbc"
    with pytest.raises(ConfigError, match=r"datasets 'pbc' and 'pbc_again' import the same im"):
        _plan({"datasets": {"pbc": {"path": str(folder)}, "pbc_again": {"path": f"{folder}/"}}})
    table = str(tmp_path / "cells.csv")
    one = {"path": table, "format": "csv", "query": "site == 'a'"}
    with pytest.raises(ConfigError, match="with query \"site == 'a'\""):
        _plan({"datasets": {"x": one, "y": dict(one)}})
    other = {**one, "query": "site == 'b'"}  # other rows of the same table: another collection
    assert {"x", "y"} <= set(_plan({"datasets": {"x": one, "y": other}}).datasets)


def test_pretraining_seeds_give_a_checkpoint_each_with_its_own_random_control():
    plan = _plan({"results": "out", "pretrain": {"seeds": [0, 4, 7]}})
    assert [(c.index, c.seed, c.model) for c in plan.checkpoints] == [
        (0, 0, "cytofm_vit_demo"),
        (1, 4, "cytofm_vit_demo_seed4"),
        (2, 7, "cytofm_vit_demo_seed7"),
    ]
    assert list(plan.backbones) == [
        "cytofm", "cytofm_seed4", "cytofm_seed7", "random", "random_seed4", "random_seed7",
        "morphometry",
    ]  # fmt: skip
    # checkpoint i's random control copies checkpoint i's architecture, initialised anew
    rnd = plan.backbones["random_seed7"]
    assert (rnd.like, rnd.seed) == ("cytofm_seed7", 2)
    assert plan.pretrained_dir("random_seed7") == "out/pretrain/cytofm_vit_demo_seed7/backbone"
    assert plan.pretrained_dir("cytofm") == "out/pretrain/cytofm_vit_demo/backbone"
    assert plan.checkpoint_groups()["cytofm_seed4"] == ["cytofm", 1]
    assert plan.checkpoint_groups()["random"] == ["random", 0]
    # each pretraining job gets its own seed; the first keeps the name (and results) of one seed
    assert plan.pretrain_params("cytofm_vit_demo_seed4")["seeds"] == [4]
    assert plan.pretrain_params("cytofm_vit_demo")["seeds"] == [0]
    targets = plan.targets()
    for model in ("cytofm_vit_demo", "cytofm_vit_demo_seed4", "cytofm_vit_demo_seed7"):
        assert f"out/pretrain/{model}/backbone" in targets
        assert f"out/pretrain/{model}/probe.json" in targets
    assert "out/eval/demo_cells/random_seed4/lora.json" in targets
    assert plan.model_card_backbones() == ["cytofm", "random"]
    # the report maps one checkpoint's features per configured backbone
    assert set(plan.report_embeddings()["demo_cells"]) == {"cytofm", "random", "morphometry"}
    assert set(plan.report_slide_features()) == {"cytofm", "random", "morphometry"}
    assert len(targets) == len(set(targets))
    # one seed: the names and paths of before
    assert set(_plan({"results": "out"}).backbones) == {"cytofm", "random", "morphometry"}
    # a shipped backbone switched off in an overlay
    off = _plan({"results": "out", "backbones": {"morphometry": {"enabled": False}}})
    assert set(off.backbones) == {"cytofm", "random"}
    # LoRA, the costly protocol, on the first checkpoint only; the others on every one
    first = _plan(
        {
            "results": "out",
            "pretrain": {"seeds": [0, 4]},
            "evaluate": {"lora": {"checkpoints": "first"}},
        }
    ).targets()
    assert "out/eval/demo_cells/cytofm/lora.json" in first
    assert "out/eval/demo_cells/random/lora.json" in first
    assert "out/eval/demo_cells/cytofm_seed4/lora.json" not in first
    assert "out/eval/demo_cells/random_seed4/lora.json" not in first
    assert "out/eval/demo_cells/random_seed4/fewshot.json" in first


@pytest.mark.parametrize(
    ("overlay", "pattern"),
    [
        ({"pretrain": {"seed": 3}}, r"(?s)'pretrain.seed' is now a list.*seeds: \[3\]"),
        ({"pretrain": {"seeds": []}}, r"pretrain.seeds"),
        ({"pretrain": {"seeds": [1, 1]}}, r"pretrain.seeds \[1, 1\] repeats a seed"),
        (
            {"pretrain": {"seeds": [0, 2]}, "backbones": {"cytofm_seed2": {"kind": "morphometry"}}},
            r"backbones.cytofm_seed2 clashes with .* pretraining seed 2",
        ),
    ],
)
def test_bad_pretraining_seeds_fail_before_any_job(overlay, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _plan(overlay)


def test_wildcard_constraints_do_not_grow_with_the_sheet(tmp_path):
    """A slide's wildcard is matched by the ids' grammar: a constraint listing the sheet's ids
    made every file match cost as much as the cohort is large (planning grew with the square
    of the slides)."""
    import re

    sizes = {}
    for n in (3, 300):
        sheet = tmp_path / f"s{n}.tsv"
        rows = "".join(f"case.{i:04d}\t/x/{i}.svs\t0.25\n" for i in range(n))
        sheet.write_text("slide_id\tpath\tmpp\n" + rows)
        wc = _plan({"samples": str(sheet), "demo": {"enabled": False}}).wildcard_constraints()
        sizes[n] = (len(wc["slide"]), len(wc["source"]))
        assert re.fullmatch(wc["slide"], "case.0001") and re.fullmatch(wc["source"], "case.0001")
        assert not re.fullmatch(wc["slide"], "case.0001.cells")  # qc/<id>.cells.png is QC's
        assert not re.fullmatch(wc["slide"], "a/b")
    assert sizes[3] == sizes[300]
