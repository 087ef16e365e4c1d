"""Nucleus detection, cell-centred patch extraction and detection metrics."""
