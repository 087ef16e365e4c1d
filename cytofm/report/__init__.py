"""The results report: tables, figures and an HTML page over a finished run."""
