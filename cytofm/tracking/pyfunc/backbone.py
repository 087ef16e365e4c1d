"""MLflow model code of a cytofm backbone (see cytofm/tracking/models.py)."""

import mlflow.models

from cytofm.tracking.models import BackboneModel

mlflow.models.set_model(BackboneModel())
