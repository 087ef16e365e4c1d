import json
import os
import socket
import subprocess
import sys

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
    from cytofm.tracking import runs

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    first = client.create_experiment("cytofm")
    real = MlflowClient.get_experiment_by_name
    calls = []

    def stale_then_real(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", stale_then_real)
    assert runs._experiment_id(client, "cytofm", None) == first
    assert len(calls) == 2


# -- spooled runs (what workflow jobs do) ------------------------------------------------------


def _spooled_jobs(tmp_path, monkeypatch):
    """Two jobs as a workflow runs them: a finished tile job with everything a stage logs, and a
    failed cells job; their runs are only in the spool."""
    from cytofm.tracking import SPOOL_ENV

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(SPOOL_ENV, str(tmp_path / "mlflow-spool"))
    (tmp_path / "qc.png").write_bytes(b"png")
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "a.png").write_bytes(b"a")
    with job_run(
        "tile",
        results_dir=tmp_path,
        params={"tiling": {"mpp": 0.5}},
        tags={"snakemake.rule": "tile"},
        run_name="tile:s1",
    ) as run:
        run.log_metrics({"n_tiles": 7})
        run.log_metrics({"loss": 2.0}, step=1)
        run.log_metrics({"loss": 1.0}, step=2)
        run.log_artifact(tmp_path / "qc.png", "qc")
        run.log_dict({"k": 1}, "tables/summary.json")
        run.log_artifacts(tmp_path / "maps", "heatmaps")
        tile_job = run.job_id
        assert run.run_id is None  # no MLflow run yet
    with pytest.raises(RuntimeError), job_run("cells", results_dir=tmp_path) as run:
        raise RuntimeError("boom")
    return tile_job


def test_spooled_runs_reach_mlflow_as_live_ones_would(tmp_path, monkeypatch):
    from cytofm.tracking import flush_spool

    tile_job = _spooled_jobs(tmp_path, monkeypatch)
    spool = tmp_path / "mlflow-spool"
    assert not (tmp_path / "mlflow.db").exists() and len(list(spool.iterdir())) == 2
    record = json.loads((spool / tile_job / "run.json").read_text())
    assert record["status"] == "FINISHED" and record["end_time"] >= record["start_time"]

    assert flush_spool(spool) == {"sent": 2, "killed": 0, "left": 0}
    assert not spool.exists()  # everything sent
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cytofm")
    runs = {r.data.tags["cytofm.stage"]: r for r in client.search_runs([exp.experiment_id])}
    tile, cells = runs["tile"], runs["cells"]
    assert (tile.info.status, cells.info.status) == ("FINISHED", "FAILED")
    assert tile.info.run_name == "tile:s1" and tile.data.tags["cytofm.job_id"] == tile_job
    assert (tile.info.start_time, tile.info.end_time) == (
        record["start_time"],
        record["end_time"],
    )  # the job's own times, not the flush's
    assert tile.data.params["tiling.mpp"] == "0.5" and tile.data.metrics["n_tiles"] == 7
    history = client.get_metric_history(tile.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    names = {a.path for a in client.list_artifacts(tile.info.run_id)}
    assert names == {"qc", "tables", "heatmaps"}
    assert [a.path for a in client.list_artifacts(tile.info.run_id, "heatmaps")] == [
        "heatmaps/a.png"
    ]
    got = client.download_artifacts(tile.info.run_id, "tables/summary.json", str(tmp_path))
    assert json.loads(open(got).read()) == {"k": 1}


def test_a_spooling_job_does_not_import_mlflow(tmp_path):
    """The point of the spool: a job's start-up pays for no mlflow import."""
    code = (
        "import sys\n"
        "from cytofm.tracking import job_run\n"
        f"with job_run('tile', results_dir={str(tmp_path)!r}, params={{'a': 1}}) as run:\n"
        "    run.log_metrics({'x': 1.0})\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mlflow'], 'mlflow imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["CYTOFM_MLFLOW_SPOOL"] = str(tmp_path / "mlflow-spool")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "mlflow-spool").glob("*/run.json"))) == 1


def _running_record(spool, name, host, pid, invocation="inv-1"):
    folder = spool / name
    folder.mkdir(parents=True)
    record = {
        "format": 1,
        "tracking_uri": f"sqlite:///{spool.parent}/mlflow.db",
        "experiment": "cytofm",
        "artifact_root": None,
        "run_name": f"tile:{name}",
        "start_time": 1_000,
        "end_time": None,
        "status": "RUNNING",
        "tags": {"cytofm.host": host, "cytofm.pid": str(pid), "cytofm.invocation_id": invocation},
        "params": {},
        "mlflow_run_id": None,
    }
    (folder / "run.json").write_text(json.dumps(record))


def test_runs_of_killed_jobs_are_sent_as_killed_and_running_ones_wait(tmp_path, monkeypatch):
    from cytofm.provenance import INVOCATION_ENV
    from cytofm.tracking import flush_spool

    monkeypatch.setenv(INVOCATION_ENV, "inv-1")
    spool = tmp_path / "mlflow-spool"
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=30)
    host = socket.gethostname()
    _running_record(spool, "dead", host, dead.pid)
    _running_record(spool, "live", host, os.getpid())
    _running_record(spool, "node", "node-7", 123)  # a SLURM node of this workflow
    _running_record(spool, "old", "node-7", 123, invocation="inv-0")  # an earlier workflow's

    assert flush_spool(spool) == {"sent": 1, "killed": 1, "left": 3}
    left = sorted(p.name for p in spool.iterdir() if p.is_dir() and p.name != ".parents")
    assert left == ["live", "node", "old"]
    # the workflow has ended: its jobs on other hosts cannot finish any more
    assert flush_spool(spool, final=True) == {"sent": 1, "killed": 1, "left": 2}
    # told that nothing runs anywhere (the CLI's --ended): all but the live process's
    assert flush_spool(spool, everywhere=True) == {"sent": 1, "killed": 1, "left": 1}

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cytofm")
    found = [r for r in client.search_runs([exp.experiment_id]) if "cytofm.role" not in r.data.tags]
    runs = {r.info.run_name: r.info for r in found}
    assert sorted(runs) == ["tile:dead", "tile:node", "tile:old"]
    assert {r.status for r in runs.values()} == {"KILLED"}
    parents = {
        r.data.tags["cytofm.invocation_id"]: r.data.tags["mlflow.parentRunId"] for r in found
    }
    assert len(set(parents.values())) == 2  # each invocation's runs under its own parent
    assert all(r.end_time >= r.start_time for r in runs.values())


def test_an_unreachable_store_keeps_the_runs_and_never_raises(tmp_path, monkeypatch, caplog):
    from cytofm.tracking import flush_spool

    _spooled_jobs(tmp_path, monkeypatch)
    spool = tmp_path / "mlflow-spool"
    broken = tmp_path / "elsewhere" / "mlflow.db"
    broken.parent.mkdir()
    broken.write_bytes(b"not a database" * 100)
    for record_file in spool.glob("*/run.json"):
        record = json.loads(record_file.read_text())
        record["tracking_uri"] = f"sqlite:///{broken}"
        record_file.write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        assert flush_spool(spool, final=True) == {"sent": 0, "killed": 0, "left": 2}
    assert "2 kept in" in caplog.text and "cytofm mlflow flush" in caplog.text
    assert len(list(spool.glob("*/run.json"))) == 2

    # fixed (here: the broken file removed), the command docs/tracking.md gives sends them
    broken.unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "cytofm.tracking", "flush", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "sent 2 run(s)" in proc.stderr, proc.stderr[-2000:]
    assert not spool.exists()
    # (another spelling of the path: mlflow keeps this process's store for the broken one)
    client = MlflowClient(f"sqlite:///{broken.parent}/./{broken.name}")
    exp = client.get_experiment_by_name("cytofm")
    assert len(client.search_runs([exp.experiment_id])) == 2


def test_a_flush_stopped_half_way_does_not_leave_a_duplicate(tmp_path, monkeypatch):
    """The run id is saved in the spool as soon as MLflow gives it; if sending stops after that
    (a crash, a server gone mid-way), the next flush replaces the half-sent run."""
    from cytofm.tracking import spool as spooling  # flush_spool looks up _send there

    _spooled_jobs(tmp_path, monkeypatch)
    spool = tmp_path / "mlflow-spool"
    real = spooling._send
    calls = []

    def crash_after_create(client, exp, folder, record, *parents):
        calls.append(folder.name)
        if len(calls) == 1:
            client.create_run(exp, run_name=record["run_name"], tags=record["tags"])
            record["mlflow_run_id"] = client.search_runs([exp])[0].info.run_id
            spooling._write_json(folder / "run.json", record)
            raise ConnectionError("server went away")
        return real(client, exp, folder, record, *parents)

    monkeypatch.setattr(spooling, "_send", crash_after_create)
    assert spooling.flush_spool(spool)["left"] == 2
    assert spooling.flush_spool(spool) == {"sent": 2, "killed": 0, "left": 0}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cytofm")
    active = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["cytofm.stage"] for r in active) == ["cells", "tile"]


# -- one parent run per workflow invocation ------------------------------------------------------


def _invocation(monkeypatch, tmp_path, invocation: str):
    from cytofm.provenance import INVOCATION_ENV
    from cytofm.tracking import PARENTS_DIR, PARENTS_ENV, SPOOL_ENV

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(INVOCATION_ENV, invocation)
    monkeypatch.setenv(SPOOL_ENV, str(tmp_path / "mlflow-spool"))
    monkeypatch.setenv(PARENTS_ENV, str(tmp_path / "mlflow-spool" / PARENTS_DIR))


def test_jobs_nest_under_one_parent_run_per_invocation(tmp_path, monkeypatch):
    """A live job and two spooled ones of one invocation end up children of one parent run,
    which the workflow's end closes with its status; every run carries MLflow's standard
    source and user tags. A workflow killed before its end leaves its parent running: the next
    invocation's end closes it as KILLED."""
    from cytofm.tracking import end_invocation

    _invocation(monkeypatch, tmp_path, "20261130T120000Z-aaaa0001")
    tags = {"snakemake.rule": "tile"}
    with job_run("pretrain", results_dir=tmp_path, tags={"snakemake.rule": "pretrain"}, live=True):
        pass
    for _ in range(2):
        with job_run("tile", results_dir=tmp_path, tags=tags):
            pass
    spool = tmp_path / "mlflow-spool"
    assert (spool / ".parents" / "20261130T120000Z-aaaa0001.json").is_file()
    counts = end_invocation(spool, "FINISHED")
    assert counts["sent"] == 2 and counts["parents_closed"] == 1
    assert not spool.exists()

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cytofm")
    found = client.search_runs([exp.experiment_id])
    parents = [r for r in found if r.data.tags.get("cytofm.role") == "invocation"]
    children = [r for r in found if "cytofm.job_id" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.end_time is not None
    assert parent.info.start_time == 1796040000000  # the invocation id's UTC stamp
    assert parent.data.tags["cytofm.invocation_id"] == "20261130T120000Z-aaaa0001"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    for run in children:
        assert run.data.tags["mlflow.source.type"] == "JOB"
        assert run.data.tags["mlflow.user"]
        rule = run.data.tags["snakemake.rule"]
        assert run.data.tags["mlflow.source.name"] == f"snakemake rule {rule}"
        commit = run.data.tags["cytofm.git_commit"]
        if commit != "unknown":
            assert run.data.tags["mlflow.source.git.commit"] == commit.removesuffix("-dirty")

    # killed: a live job made the parent, the workflow never reached its end
    _invocation(monkeypatch, tmp_path, "20261130T130000Z-aaaa0002")
    with job_run("pretrain", results_dir=tmp_path, live=True):
        pass
    _invocation(monkeypatch, tmp_path, "20261130T140000Z-aaaa0003")
    with job_run("tile", results_dir=tmp_path, tags=tags):
        pass
    assert end_invocation(spool, "FAILED")["parents_closed"] == 2
    status = {
        r.data.tags["cytofm.invocation_id"]: r.info.status
        for r in client.search_runs([exp.experiment_id], "tags.`cytofm.role` = 'invocation'")
    }
    assert status == {
        "20261130T120000Z-aaaa0001": "FINISHED",
        "20261130T130000Z-aaaa0002": "KILLED",
        "20261130T140000Z-aaaa0003": "FAILED",
    }


def test_jobs_racing_to_create_the_parent_keep_one(tmp_path, monkeypatch):
    """Two jobs both find no parent and both create one: each keeps the oldest, and the
    other is deleted."""
    from cytofm.tracking.invocation import parent_run

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("cytofm")
    real = MlflowClient.search_runs
    calls = []

    def miss_first(self, *args, **kwargs):  # the first search runs before either create
        calls.append(1)
        return [] if len(calls) <= 1 else real(self, *args, **kwargs)

    first = parent_run(client, exp, "inv-race", 1000)
    monkeypatch.setattr(MlflowClient, "search_runs", miss_first)
    second = parent_run(client, exp, "inv-race", 2000)
    assert first == second
    alive = real(client, [exp], "tags.`cytofm.role` = 'invocation'")
    assert [r.info.run_id for r in alive] == [first]


def test_long_jobs_log_system_metrics_under_mlflows_names(tmp_path, monkeypatch):
    """A job run with ``system_metrics`` samples CPU and memory beside its work, into the spool
    as into a live run; other jobs log none."""
    import time

    from cytofm.tracking import flush_spool

    _invocation(monkeypatch, tmp_path, "20261130T150000Z-aaaa0004")
    fast = TrackingConfig(system_metrics_s=0.05)
    with job_run("embed", tracking=fast, results_dir=tmp_path, system_metrics=True):
        time.sleep(0.3)
    with job_run("pretrain", tracking=fast, results_dir=tmp_path, system_metrics=True, live=True):
        time.sleep(0.3)
    with job_run("tile", tracking=fast, results_dir=tmp_path):
        time.sleep(0.1)
    assert flush_spool(tmp_path / "mlflow-spool")["sent"] == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cytofm")
    runs = {r.data.tags.get("cytofm.stage"): r for r in client.search_runs([exp.experiment_id])}
    for stage in ("embed", "pretrain"):
        run_id = runs[stage].info.run_id
        history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
        assert len(history) >= 3 and [m.step for m in history] == list(range(len(history)))
        memory = client.get_metric_history(run_id, "system/system_memory_usage_megabytes")
        assert all(m.value > 0 for m in memory)
        assert "system/process_memory_rss_megabytes" in runs[stage].data.metrics
    assert not any(k.startswith("system/") for k in runs["tile"].data.metrics)
