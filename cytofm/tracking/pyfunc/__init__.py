"""MLflow model code files, one per kind of cytofm model (cytofm/tracking/models.py)."""
