"""MLflow model code of a cytofm slide-level ABMIL model (see cytofm/tracking/models.py)."""

import mlflow.models

from cytofm.tracking.models import AbmilModel

mlflow.models.set_model(AbmilModel())
