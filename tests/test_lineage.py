"""Lineage: job ids of a job's inputs reach its MLflow tags and its outputs' provenance."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cytofm.config import TrackingConfig
from cytofm.lineage import artifact_record, input_lineage, lineage_tags
from cytofm.provenance import INVOCATION_ENV, file_sha256, new_invocation_id, provenance
from cytofm.stages.context import JobContext, named_inputs
from cytofm.store import atomic_group
from cytofm.tracking import job_run


def _store(path, record):
    with atomic_group(path) as g:
        g.create_array("x", data=np.zeros(3))
        g.attrs["provenance"] = record
    return path


def test_records_of_stores_results_and_backbones(tmp_path):
    store = _store(tmp_path / "a.zarr", {"stage": "cells", "job_id": "r1"})
    result = tmp_path / "linear.json"
    result.write_text(json.dumps({"provenance": {"stage": "evaluate", "job_id": "r2"}}))
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    (backbone / "config.json").write_text(json.dumps({"provenance": {"stage": "pretrain"}}))
    (backbone / "model.safetensors").write_bytes(b"weights")
    raw = tmp_path / "slide.svs"
    raw.write_bytes(b"raw")

    rec = artifact_record(store)
    assert (rec["stage"], rec["job_id"], rec["artifact"]) == ("cells", "r1", "a.zarr")
    assert rec["sha256"] == file_sha256(store / "zarr.json")
    assert artifact_record(result)["sha256"] == file_sha256(result)
    bb = artifact_record(backbone)
    assert bb["stage"] == "pretrain" and bb["sha256"] == file_sha256(backbone / "model.safetensors")
    assert artifact_record(raw) is None  # raw inputs are not named in lineage
    assert artifact_record(tmp_path / "missing.zarr") is None


def test_tags_name_one_input_or_list_many(tmp_path):
    one = _store(tmp_path / "f.zarr", {"stage": "embed", "job_id": "e1"})
    many = [
        _store(tmp_path / f"c{i}.zarr", {"stage": "cells", "job_id": f"c{i}"}) for i in range(3)
    ]
    tags = lineage_tags(input_lineage({"features": str(one), "stores": many}))
    assert tags["cytofm.input.features.job_id"] == "e1"
    assert tags["cytofm.input.features.stage"] == "embed"
    assert tags["cytofm.input.stores.count"] == "3"
    assert tags["cytofm.input.stores.job_ids"] == "c0,c1,c2"


def test_a_long_job_id_list_is_cut_to_mlflows_limit():
    recs = [{"job_id": f"{i:032x}"} for i in range(1000)]
    value = lineage_tags({"features": recs})["cytofm.input.features.job_ids"]
    assert len(value) <= 5000 and value.endswith("(all in lineage.json)")


def test_named_inputs_from_mappings_and_lists():
    assert named_inputs({"a": "x", "b": ("y", "z")}) == {"a": "x", "b": ["y", "z"]}
    assert named_inputs(["p", "q"]) == {"input": ["p", "q"]}
    assert named_inputs(None) == {}


def test_outputs_written_in_a_job_carry_its_run_and_inputs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(INVOCATION_ENV, "inv-1")
    upstream = _store(tmp_path / "cells.zarr", {"stage": "cells", "job_id": "c9"})
    job = JobContext(results_dir=tmp_path, rule="embed", inputs={"store": str(upstream)})
    with job.run("embed", {"a": 1}) as run:
        record = provenance("embed", {"a": 1})
    assert record["job_id"] == run.job_id and record["mlflow_run_id"] == run.run_id
    assert record["invocation_id"] == "inv-1"
    assert record["inputs"]["store"][0]["job_id"] == "c9"
    assert "job_id" not in provenance("embed", {})  # outside a job: no job to name

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    got = client.get_run(run.run_id)
    assert got.data.tags["cytofm.invocation_id"] == "inv-1"
    assert got.data.tags["cytofm.job_id"] == run.job_id
    assert got.data.tags["cytofm.input.store.job_id"] == "c9"
    lineage = client.download_artifacts(run.run_id, "lineage.json", str(tmp_path))
    assert json.loads(open(lineage).read())["store"][0]["stage"] == "cells"


def test_lineage_without_tracking(tmp_path):
    upstream = _store(tmp_path / "cells.zarr", {"stage": "cells", "job_id": "c1"})
    off = TrackingConfig(tracking_uri="none")
    with job_run(
        "embed", tracking=off, results_dir=tmp_path, inputs={"store": str(upstream)}
    ) as run:
        record = provenance("embed", {})
    assert record["job_id"] == run.job_id and "mlflow_run_id" not in record
    assert record["inputs"]["store"][0] == {
        "artifact": "cells.zarr",
        "stage": "cells",
        "job_id": "c1",
        "sha256": file_sha256(upstream / "zarr.json"),
    }


def test_invocation_ids_are_unique_and_sortable():
    a, b = new_invocation_id(), new_invocation_id()
    assert a != b and a[:8].isdigit()


@pytest.mark.parametrize("value", ["", None])
def test_no_invocation_outside_a_workflow(value, monkeypatch):
    if value is None:
        monkeypatch.delenv(INVOCATION_ENV, raising=False)
    else:
        monkeypatch.setenv(INVOCATION_ENV, value)
    assert provenance("x", {})["invocation_id"] is None
