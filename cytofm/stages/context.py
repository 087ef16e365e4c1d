"""What every stage needs to know about the job it runs in."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from cytofm.config import TrackingConfig, from_mapping
from cytofm.tracking import RunLogger, job_run

__all__ = ["JobContext", "named_inputs"]


def named_inputs(inputs: Mapping | Sequence | None) -> dict[str, str | list[str]]:
    """name -> path or list of paths, from a mapping or a list with optional names."""
    if inputs is None:
        return {}
    items = dict(inputs.items()) if hasattr(inputs, "items") else {}
    if not items and not isinstance(inputs, Mapping):
        items = {"input": list(inputs)}
    return {
        str(k): str(v) if isinstance(v, str | Path) else [str(x) for x in v]
        for k, v in items.items()
    }


@dataclasses.dataclass(frozen=True)
class JobContext:
    """Results folder, tracking settings, the job's identity (rule, wildcards) and its inputs
    (name -> path or paths; their producers' run ids become the job's lineage)."""

    results_dir: Path = Path("results")
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    rule: str = "interactive"
    wildcards: Mapping[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 0
    inputs: Mapping[str, str | list[str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def create(
        cls,
        config: Mapping[str, Any],
        rule: str = "interactive",
        wildcards: Mapping | None = None,
        inputs: Mapping | Sequence | None = None,
    ) -> JobContext:
        """Build from the workflow's config mapping. ``inputs`` may be a mapping or a job's
        input list (named entries are kept by name, an unnamed list as ``input``)."""
        return cls(
            results_dir=Path(config.get("results", "results")),
            tracking=from_mapping(TrackingConfig, config.get("mlflow"), "mlflow"),
            rule=rule,
            wildcards=dict(wildcards or {}),
            seed=int(config.get("seed", 0)),
            inputs=named_inputs(inputs),
        )

    @property
    def tags(self) -> dict[str, str]:
        tags = {"snakemake.rule": self.rule}
        tags.update({f"snakemake.wildcard.{k}": str(v) for k, v in self.wildcards.items()})
        return tags

    def run(
        self,
        stage: str,
        params: Mapping[str, Any] | None = None,
        live: bool = False,
        system_metrics: bool = False,
    ) -> AbstractContextManager[RunLogger]:
        """The job's one MLflow run, tagged with its rule and wildcards; ``live`` logs it to
        MLflow as the job goes even where the workflow spools runs, ``system_metrics`` samples
        CPU, memory and GPU use beside it (long jobs)."""
        return job_run(
            stage,
            tracking=self.tracking,
            results_dir=self.results_dir,
            params=params,
            tags=self.tags,
            run_name=self.run_name,
            inputs=self.inputs,
            live=live,
            system_metrics=system_metrics,
        )

    @property
    def run_name(self) -> str:
        suffix = "-".join(str(v) for v in self.wildcards.values())
        return f"{self.rule}:{suffix}" if suffix else self.rule
