"""Exceptions for bad user input. Each message names the offending file or value and the fix."""

__all__ = ["ConfigError", "CytofmError", "InputDataError", "MissingResolutionError"]


class CytofmError(Exception):
    """Base class of every error cytofm raises on purpose."""


class ConfigError(CytofmError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class InputDataError(CytofmError, ValueError):
    """An input file (slide, sample sheet, image collection) cannot be used as given."""


class MissingResolutionError(InputDataError):
    """A slide has no micrometres-per-pixel value in its metadata nor in the sample sheet."""
