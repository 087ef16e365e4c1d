"""Stage entry points: one public function per Snakemake rule.

Each takes plain paths and values (never the ``snakemake`` object), opens one MLflow run, writes
its outputs atomically with provenance, and returns a summary dict.
"""
