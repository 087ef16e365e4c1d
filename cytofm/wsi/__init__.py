"""Whole-slide image reading, foreground masks, tile grids and QC images."""
