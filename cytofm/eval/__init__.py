"""Evaluation harness: backbones, cached features, splits, protocols and metrics."""
