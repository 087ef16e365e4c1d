"""cytofm's models as MLflow models: logged with their job's run and registered.

Two kinds, each an MLflow *pyfunc* written as code (``pyfunc/<kind>.py``, MLflow's "models from
code": nothing is pickled) around the files cytofm already writes, copied in as artifacts:

* ``backbone``: the exported timm backbone folder (``model.safetensors`` + ``config.json``);
  ``predict`` takes uint8 images (N, H, W, 3) and returns features (N, D) float32, as the
  ``embed`` rule computes them (resized to the input size, normalised as in config.json);
* ``linear``: a cell task's final head folder (``head.safetensors`` + ``head.json``);
  ``predict`` takes cell features (N, D) and returns their class probabilities (N rows);
* ``abmil``: a slide-level model folder (``model.safetensors`` + ``model.json``); ``predict``
  takes one slide's cell features (N, D) and returns its class probabilities (one row, a
  column per class), the mean over the seeds' models as the ``predict`` rule computes them.

``mlflow.pyfunc.load_model("models:/<name>/<version>")`` loads either where cytofm is
installed. Logging goes through a client and a run id, so it works for a live run inside its
job and for a spooled run when the workflow sends it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

__all__ = ["KINDS", "AbmilModel", "BackboneModel", "LinearHeadModel", "log_model"]

log = logging.getLogger(__name__)

KINDS = ("backbone", "linear", "abmil")


class BackboneModel(mlflow.pyfunc.PythonModel):
    """Images (N, H, W, 3) uint8 -> features (N, D) float32."""

    def load_context(self, context) -> None:
        from cytofm.config import BackboneSpec
        from cytofm.eval.backbones import load_backbone_spec
        from cytofm.eval.features import pick_device

        self.device = pick_device("auto")
        spec = BackboneSpec(name="registered", kind="pretrained")
        self.backbone = load_backbone_spec(spec, context.artifacts["model"], str(self.device))

    def predict(self, context, model_input, params=None) -> np.ndarray:
        from cytofm.eval.features import embed_array

        images = np.asarray(model_input)
        if images.ndim == 3:  # one image
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        batch = int((params or {}).get("batch_size", 64))
        return embed_array(self.backbone, images, batch_size=batch, device=self.device)


class AbmilModel(mlflow.pyfunc.PythonModel):
    """One slide's cell features (N, D) -> its class probabilities (1 row, a column a class)."""

    def load_context(self, context) -> None:
        from cytofm.eval.mil_model import load_mil_model

        self.models, self.card = load_mil_model(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from cytofm.eval.mil_model import predict_bag

        bag = np.asarray(model_input, dtype=np.float32)
        dim = self.card["architecture"]["in_dim"]
        if bag.ndim != 2 or bag.shape[1] != dim:
            raise ValueError(f"expected one slide's features (N, {dim}), got {bag.shape}")
        probs, _ = predict_bag(self.models, bag)
        return pd.DataFrame([probs], columns=[str(c) for c in self.card["classes"]])


class LinearHeadModel(mlflow.pyfunc.PythonModel):
    """Cell features (N, D) -> class probabilities (N rows, a column a class)."""

    def load_context(self, context) -> None:
        from cytofm.eval.cell_head import load_cell_head

        self.head, self.card = load_cell_head(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        x = np.asarray(model_input, dtype=np.float32)
        dim = len(self.head.mean)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"expected cell features (N, {dim}), got {x.shape}")
        return pd.DataFrame(self.head.predict_proba(x), columns=list(self.card["classes"]))


def _signature(kind: str, folder: Path):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    if kind == "backbone":
        dim = json.loads((folder / "config.json").read_text())["num_features"]
        return ModelSignature(
            Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
            Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
        )
    (card_file,) = (
        folder / name for name in ("model.json", "head.json") if (folder / name).is_file()
    )
    card = json.loads(card_file.read_text())
    return ModelSignature(
        Schema([TensorSpec(np.dtype(np.float32), (-1, card["features"]["dim"]))]),
        Schema([ColSpec("double", str(c)) for c in card["classes"]]),
    )


def _requirements() -> list[str]:
    import importlib.metadata

    reqs = []
    for name in ("cytofm", "torch", "timm", "safetensors", "numpy", "pandas"):
        try:
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def log_model(
    client: Any, run_id: str, kind: str, folder: str | Path, name: str, artifact_path: str
) -> str:
    """Log ``folder`` (a cytofm model of ``kind``) as an MLflow model under ``artifact_path``
    of run ``run_id`` and register it as ``name``; returns the new version."""
    from mlflow.exceptions import MlflowException

    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; one of {KINDS}")
    folder = Path(folder)
    code = Path(__file__).with_name("pyfunc") / f"{kind}.py"
    with tempfile.TemporaryDirectory(prefix="cytofm-model-") as tmp:
        local = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(local),
            python_model=str(code),
            artifacts={"model": str(folder)},
            signature=_signature(kind, folder),
            pip_requirements=_requirements(),
            metadata={"cytofm_kind": kind},
        )
        client.log_artifacts(run_id, str(local), artifact_path)
    try:
        client.create_registered_model(name)
    except MlflowException:  # registered by an earlier run
        pass
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id)
    log.info("registered MLflow model %s version %s", name, version.version)
    return str(version.version)
