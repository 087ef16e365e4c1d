"""Exports for the tools users view and model slides with: QuPath GeoJSON and the HDF5
feature layouts of TRIDENT and STAMP."""
