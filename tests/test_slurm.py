"""The SLURM path, for real: a single-node SLURM cluster on localhost (with its accounting
database, so the plugin's default `sacct` status path runs) executes the tiny workflow through
`snakemake --profile profiles/slurm` (snakemake-executor-plugin-slurm), and SLURM itself
(`sacct`) is asked whether the jobs ran, where, with what, and that they completed.

Needs root and ../shared/tools/slurm-local.sh (it installs Debian's slurm-wlm and munge and
starts the daemons); skipped with the reason otherwise. The cluster is stopped afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO.parent / "shared" / "tools" / "slurm-local.sh"
pytestmark = [pytest.mark.workflow, pytest.mark.slow_ok, pytest.mark.slurm]
# the Snakefile's localrules: they run in the submitting snakemake process
LOCAL_RULES = {"all", "demo_sheet", "eval_summary", "mil_summary", "model_card", "predict_table"}
SLIDES_PER_SUBMISSION = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not SCRIPT.is_file():
        pytest.skip(f"{SCRIPT} not found: the local SLURM cluster script lives in ../shared/tools")
    if os.geteuid() != 0:
        pytest.skip("starting a local SLURM cluster needs root")
    if shutil.which("apt-get") is None and shutil.which("sbatch") is None:
        pytest.skip("neither SLURM nor apt-get (to install it) is available")
    state = tmp_path_factory.mktemp("slurm-local")
    (state / "logs").mkdir()
    env = {**os.environ, "SLURM_LOCAL_DIR": str(state), "SLURM_LOCAL_ACCOUNTING": "slurmdbd"}
    start = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900
    )
    assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=300)


def _my_config(tmp_path, mlflow_server, *overlays: dict, name="my_config.yaml") -> Path:
    """The user's config file: the tiny test config, the SLURM overlay (2 CPUs, no GPUs, a
    short evaluation) and the results folder and tracking server, merged as Snakemake merges
    config files."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
    for over in (
        yaml.safe_load((REPO / ".test" / "slurm.yaml").read_text()),
        {"results": str(tmp_path / "results"), "mlflow": {"tracking_uri": mlflow_server}},
        *overlays,
    ):
        update_config(config, over)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _readme_command(config: Path) -> list[str]:
    """README.md's SLURM command, with this cluster's partition and account and the test's
    config file in place of the user's; nothing else added."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n\s*(snakemake --profile profiles/slurm.*?)\n\s*```", text, re.S)
    assert block, "README.md lost its SLURM command"
    words = block.group(1).replace("\\\n", " ").split()
    assert words[:3] == ["snakemake", "--profile", "profiles/slurm"], words
    exe = str(Path(sys.executable).with_name("snakemake"))
    swap = {
        "my_config.yaml": str(config),
        "slurm_partition=cpu": "slurm_partition=debug",
        "slurm_account=mylab": "slurm_account=ci",  # the account slurm-local.sh creates
    }
    return [exe, *(swap.get(w, w) for w in words[1:])]


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, mlflow_server):
    """README's SLURM command on the tiny workflow, once for the module's tests, with the
    slides per submission README says how to set: 2 slides, one tile/cells job at a time (the
    cluster has 2 CPUs)."""
    tmp_path = tmp_path_factory.mktemp("slurm-run")
    cmd = _readme_command(_my_config(tmp_path, mlflow_server))
    cmd += ["--group-components", f"slides={SLIDES_PER_SUBMISSION}", "--resources", "slide_jobs=1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.pop("CYTOFM_INVOCATION_ID", None)
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=2400, env=env)
    return {"tmp": tmp_path, "cmd": cmd, "proc": proc, "started": started, "env": env}


def test_tiny_workflow_runs_as_slurm_jobs(slurm_run, mlflow_server):
    tmp_path, cmd, proc = slurm_run["tmp"], slurm_run["cmd"], slurm_run["proc"]
    started = slurm_run["started"]
    results = tmp_path / "results"
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "--workflow-profile" not in " ".join(cmd)

    # SLURM job id -> rule or group, from the plugin's submissions (its log paths name them)
    found = re.findall(r"SLURM jobid (\d+) \(log: [^)]*/(rule|group)_(\w+?)/", out)
    submitted = {i: name for i, _, name in found}
    groups = [i for i, kind, _ in found if kind == "group"]
    planned = int(re.search(r"(\d+) of (\d+) steps \(100%\) done", out).group(2))
    # every job went through sbatch but the Snakefile's localrules (the target, summaries);
    # a slide's tiling and cells went in a group submission of SLIDES_PER_SUBMISSION slides
    local = re.findall(r"^localrule (\w+):", out, re.M)
    assert {"all", "eval_summary", "mil_summary"} <= set(local) <= LOCAL_RULES, local
    slides = sorted(p.stem for p in (results / "demo" / "slides").glob("*.tif"))
    assert len(slides) == 5
    assert len(groups) == -(-len(slides) // SLIDES_PER_SUBMISSION) == 3
    # the plugin names a group job after the group and its rules
    assert {submitted[i] for i in groups} == {"slides_cells_tile"}
    assert len(submitted) - len(groups) + 2 * len(slides) + len(local) == planned
    assert not set(submitted.values()) & (LOCAL_RULES | {"tile", "cells"})
    assert {"pretrain", "embed", "embed_slides", "evaluate", "mil"} <= set(submitted.values())
    for s in slides:  # every store of every slide
        for kind in ("tiles", "cells"):
            assert (results / kind / f"{s}.zarr" / "zarr.json").is_file(), (kind, s)
        assert (results / "features" / "cytofm" / "cells" / f"{s}.zarr" / "zarr.json").is_file()
    # SLURM's record of this run (the plugin names every submission after the run's id):
    # exactly the submissions above, the groups among them
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    named = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--name", run_id, "-o", "JobID,Comment", "-S", "2020-01-01"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert sorted(line.split("|")[0] for line in named) == sorted(submitted)

    # SLURM's own records: every job known to the accounting database, completed, on the
    # partition asked for, with the CPUs the config's `resources:` gives the rule
    acct = subprocess.run(
        [
            "sacct",
            "-n",
            "-X",
            "-P",
            "-j",
            ",".join(submitted),
            "-o",
            "JobID,State,Partition,AllocCPUS,Account",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    records = {line.split("|")[0]: line.split("|")[1:] for line in acct}
    assert set(records) == set(submitted), (sorted(records), sorted(submitted))
    assert {r[0] for r in records.values()} == {"COMPLETED"}, records
    assert {r[1] for r in records.values()} == {"debug"} and {r[3] for r in records.values()} == {
        "ci"
    }
    pretrain = next(i for i, rule in submitted.items() if rule == "pretrain")
    assert records[pretrain][2] == "2"  # threads from .test/slurm.yaml, not the default 8
    assert {records[i][2] for i in groups} == {"1"}  # slide_jobs=1: one job at a time
    (tmp_path / "slurm_jobs.json").write_text(
        json.dumps({i: [submitted[i], *records[i]] for i in submitted}, indent=1)
    )

    # every SLURM job logged its run to the tracking server, under the invocation id the
    # submitting Snakemake process set
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("cytofm-test")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"attributes.start_time > {int(started * 1000)}",
        max_results=1000,
    )
    parents = [r for r in runs if r.data.tags.get("cytofm.role") == "invocation"]
    runs = [r for r in runs if "cytofm.job_id" in r.data.tags]
    assert len(runs) == planned - 1  # every job but the target rule, on SLURM or local
    assert len({r.data.tags["cytofm.invocation_id"] for r in runs}) == 1
    assert len(parents) <= 1  # its start is the invocation's, to the second: may predate ours
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    assert all(r.info.status == "FINISHED" for r in runs)

    # and the outputs are those of a local run
    summary = results / "eval" / "demo_abnormal" / "summary.csv"
    assert summary.is_file() and (results / "eval" / "demo_cells" / "summary.csv").is_file()
    res = json.loads((results / "eval" / "demo_abnormal" / "cytofm" / "abmil.json").read_text())
    assert len(res["slides"]) == 4


def _pretraining_request(slurm_run, mlflow_server, overlay: dict, name: str) -> str:
    """README's command with ``overlay``, rerunning the pretraining of the finished run: what
    SLURM was asked for that job, read back from SLURM (``scontrol show job``) or, where it
    refused the request (this one-node cluster has no GPUs), from the plugin's report of the
    sbatch call; the job is cancelled."""
    assert slurm_run["proc"].returncode == 0, "the SLURM run failed (see the test above)"
    tmp_path = slurm_run["tmp"]
    config = _my_config(tmp_path, mlflow_server, overlay, name=f"{name}.yaml")
    exe, *options = _readme_command(config)
    target = str(tmp_path / "results" / "pretrain" / "cytofm_vit_demo" / "backbone")
    log = tmp_path / f"{name}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [exe, target, "--forcerun", "pretrain", *options],
            cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=slurm_run["env"], text=True,
        )  # fmt: skip
    request = None
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None and request is None:
            time.sleep(3)
            queued = subprocess.run(
                ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30
            ).stdout.split()
            for job in queued:
                show = subprocess.run(
                    ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30
                ).stdout
                if "rule_pretrain" in show or "pretrain" in show:
                    request = show
        if request is None:  # SLURM refused the submission: the plugin reports its call
            text = log.read_text()
            if "sbatch" in text:
                request = text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], timeout=60)
    assert request is not None, log.read_text()[-4000:]
    return request


def test_a_job_asking_for_gpus_is_submitted_with_them(slurm_run, mlflow_server):
    """`resources: {gpu: true, pretrain: {gpus: 4}}` and README's command: SLURM is asked for
    4 GPUs for the pretraining job (profiles/default, loaded as the workflow profile, must not
    cap it)."""
    gpus = {"resources": {"gpu": True, "pretrain": {"gpus": 4}}}
    request = _pretraining_request(slurm_run, mlflow_server, gpus, "gpu_run")
    assert re.search(r"gpu[:=/]4\b|gpus[= ]4\b|gpu:4\b", request), request[-3000:]


def test_a_multi_node_pretraining_job_is_submitted_with_its_nodes(slurm_run, mlflow_server):
    """`resources.pretrain: {nodes: 2, gpus: 4}`: the job asks for 2 nodes with 4 GPUs each
    and one task per node (srun starts a torchrun on each), as submitted to SLURM."""
    nodes = {"resources": {"gpu": True, "pretrain": {"gpus": 4, "nodes": 2}}}
    request = _pretraining_request(slurm_run, mlflow_server, nodes, "nodes_run")
    if "sbatch call" in request:  # refused (one node here): the call the plugin made
        call = request[request.index("sbatch call") :]
        assert "--nodes=2" in call and "--ntasks-per-node=1" in call, call[:2000]
        assert "--gres=gpu:4" in call or "gres=gpu:4" in call, call[:2000]
    else:  # accepted and waiting: SLURM's own record of the request
        assert re.search(r"NumNodes=2\b", request), request[-3000:]
        assert re.search(r"gpu[:=/]4\b", request), request[-3000:]
