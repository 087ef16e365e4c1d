import pytest
from mlflow.tracking import MlflowClient

from cytofm.config import TrackingConfig
from cytofm.tracking import flatten, job_run, resolve_tracking_uri


def test_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="http://x"), tmp_path) == "http://x"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env.db")
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="http://x"), tmp_path) == (
        "sqlite:////env.db"
    )


def test_one_run_per_job_with_params_metrics_tags_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    art = tmp_path / "qc.png"
    art.write_bytes(b"png")
    with job_run(
        "tile",
        results_dir=tmp_path,
        params={"tiling": {"mpp": 0.5}},
        tags={"snakemake.rule": "tile"},
    ) as run:
        run.log_metrics({"n_tiles": 7})
        run.log_artifact(art, "qc")
    with pytest.raises(RuntimeError), job_run("cells", results_dir=tmp_path) as run:
        raise RuntimeError("boom")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cytofm")
    runs = {r.data.tags["cytofm.stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert runs["tile"].info.status == "FINISHED" and runs["cells"].info.status == "FAILED"
    tile = runs["tile"]
    assert tile.data.params["tiling.mpp"] == "0.5"
    assert tile.data.metrics["n_tiles"] == 7
    assert tile.data.tags["snakemake.rule"] == "tile" and "cytofm.git_commit" in tile.data.tags
    assert [a.path for a in client.list_artifacts(tile.info.run_id, "qc")] == ["qc/qc.png"]
    assert (tmp_path / "mlflow-artifacts").is_dir()


def test_tracking_off_is_a_no_op(tmp_path):
    with job_run("tile", tracking=TrackingConfig(tracking_uri="none"), results_dir=tmp_path) as run:
        run.log_metrics({"a": 1})
        assert not run.active
    assert not (tmp_path / "mlflow.db").exists()


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_parallel_jobs_racing_to_create_the_experiment(tmp_path, monkeypatch):
    """Two jobs starting together against a server both see no experiment; the second
    create fails and must fall back to the first one's experiment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from cytofm import tracking

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    first = client.create_experiment("cytofm")
    real = MlflowClient.get_experiment_by_name
    calls = []

    def stale_then_real(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", stale_then_real)
    assert tracking._experiment_id(client, "cytofm", None) == first
    assert len(calls) == 2
