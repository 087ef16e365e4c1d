"""The pretrained backbone and the final slide-level models as registered MLflow models."""

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cytofm.config import BackboneSpec, TrackingConfig
from cytofm.eval.backbones import load_backbone_spec
from cytofm.eval.features import embed_array
from cytofm.eval.mil_model import load_mil_model, predict_bag
from cytofm.store import open_store
from cytofm.tracking import SPOOL_ENV, flush_spool, job_run
from tests.test_eval_backbones import export_tiny
from tests.test_predict import trained  # noqa: F401  the toy slide task's MIL job


@pytest.fixture
def backbone_dir(tmp_path):
    return export_tiny(tmp_path / "backbone", 5, 0.5, 16.0)


def test_models_are_registered_and_load_back_to_the_same_outputs(
    tmp_path,
    monkeypatch,
    backbone_dir,
    trained,  # noqa: F811
):
    """A live job (pretraining) registers its backbone at once, a spooled one (mil) its slide
    model when the run is sent; ``mlflow.pyfunc.load_model`` of each registered version gives
    what cytofm computes from the folder."""
    import mlflow.pyfunc

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(SPOOL_ENV, str(tmp_path / "mlflow-spool"))
    toy, cohort, _ = trained
    with job_run("pretrain", results_dir=tmp_path, live=True) as run:
        run.log_model("backbone", backbone_dir, "toy_vit", "mlflow_model")
        pretrain_run = run.run_id
    with job_run("mil", results_dir=tmp_path) as run:
        run.log_model("abmil", toy / "abmil" / "model", "toy.toy.abmil", "mlflow_model")
    assert flush_spool(tmp_path / "mlflow-spool")["sent"] == 1

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    (bb_version,) = client.search_model_versions("name = 'toy_vit'")
    assert bb_version.run_id == pretrain_run
    images = np.random.default_rng(0).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)
    served = mlflow.pyfunc.load_model(f"models:/toy_vit/{bb_version.version}").predict(images)
    local = load_backbone_spec(BackboneSpec("x", "pretrained"), backbone_dir)
    assert served.shape == (6, 32) and np.allclose(served, embed_array(local, images), atol=1e-5)

    (head_version,) = client.search_model_versions("name = 'toy.toy.abmil'")
    head = mlflow.pyfunc.load_model(f"models:/toy.toy.abmil/{head_version.version}")
    bag = np.asarray(open_store(cohort[21]["features"])["features"][:], np.float32)
    probs = head.predict(bag)
    models, card = load_mil_model(toy / "abmil" / "model")
    assert list(probs.columns) == card["classes"]
    assert np.allclose(probs.to_numpy()[0], predict_bag(models, bag)[0], atol=1e-6)
    with pytest.raises(Exception, match=r"does not match expected shape \(-1, 8\)"):  # signature
        head.predict(bag[:, :3].copy())


def test_register_models_false_logs_no_model(tmp_path, monkeypatch, backbone_dir):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    off = TrackingConfig(register_models=False)
    with job_run("pretrain", tracking=off, results_dir=tmp_path, live=True) as run:
        run.log_model("backbone", backbone_dir, "toy_vit_off", "mlflow_model")
        run_id = run.run_id
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.search_model_versions("name = 'toy_vit_off'") == []
    assert [a.path for a in client.list_artifacts(run_id)] == []


def test_readmes_mlflow_snippet_loads_the_registered_backbone(tmp_path, monkeypatch, backbone_dir):
    """README's Python block, run as written in a folder whose results hold a registered
    backbone (the demo's name, version 1), gives the backbone's features."""
    import re
    from pathlib import Path

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with job_run("pretrain", results_dir=Path("results"), live=True) as run:
        run.log_model("backbone", backbone_dir, "cytofm_vit_demo", "mlflow_model")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "mlflow" in b]
    images = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    scope = {"images": images}
    exec(block, scope)
    local = load_backbone_spec(BackboneSpec("x", "pretrained"), backbone_dir)
    assert np.allclose(scope["features"], embed_array(local, images), atol=1e-5)
