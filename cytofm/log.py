"""Logging set-up: configured once per process, named loggers everywhere else."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["setup_logging"]

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(
    log_file: str | Path | None = None, level: int = logging.INFO, tag: str = ""
) -> None:
    """Send log records (and, for a file, stderr such as progress bars) to ``log_file``.

    Snakemake scripts call this first so that everything a job prints lands in the rule's
    ``log:`` file, which Snakemake keeps next to the job's outputs. ``tag`` starts every record
    (``[rank 1]`` for a torchrun worker, whose lines share the job's log with the others).
    """
    handlers: list[logging.Handler] = []
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "a", buffering=1)
        sys.stderr = stream
        handlers.append(logging.StreamHandler(stream))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(f"{tag} {_FORMAT}" if tag else _FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    # Third-party libraries that configure logging on import are kept quiet.
    for noisy in ("tiatoolbox", "PIL", "matplotlib", "alembic", "urllib3", "numcodecs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if log_file is not None:
        sys.excepthook = _report_input_errors


def _report_input_errors(exc_type, exc, tb) -> None:
    """In a job: an error about the user's input (a :class:`CytofmError`) ends the job with its
    message alone, which Snakemake shows from the log; anything else keeps its traceback."""
    from cytofm.errors import CytofmError

    if isinstance(exc, CytofmError):
        logging.getLogger("cytofm").error("%s: %s", exc_type.__name__, exc)
        return
    sys.__excepthook__(exc_type, exc, tb)
