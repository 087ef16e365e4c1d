"""MLflow model code of a cytofm cell task's linear head (see cytofm/tracking/models.py)."""

import mlflow.models

from cytofm.tracking.models import LinearHeadModel

mlflow.models.set_model(LinearHeadModel())
