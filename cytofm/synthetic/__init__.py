"""Synthetic cytology: cells with class-specific morphology, slides and crop collections."""
