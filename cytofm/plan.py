"""The run plan: what a config and its sample sheet ask the workflow to do.

:meth:`Plan.build` validates the config (schema and dataclasses), merges the demo's sheet with
the user's, and works out the datasets, pretraining inputs, backbones, tasks and slide-task
cohorts, the job resources and the final targets, refusing before any job runs what cannot
work (a test slide in pretraining, a task on a dataset that is not imported, ...). It is a
plain object, so it is tested without Snakemake; ``workflow/rules/common.smk`` only hands its
answers to the rules.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from cytofm.config import (
    RESOURCE_DEFAULTS,
    BackboneSpec,
    Config,
    SlideTaskConfig,
    TaskConfig,
    check_moved,
    from_mapping,
)
from cytofm.errors import ConfigError, InputDataError
from cytofm.paths import Paths
from cytofm.sheet import ID_PATTERN

__all__ = ["SCHEMA", "SHEET_SCHEMA", "Plan"]

_WORKFLOW = Path(__file__).resolve().parents[1] / "workflow" / "schemas"
SCHEMA = _WORKFLOW / "config.schema.yaml"
SHEET_SCHEMA = _WORKFLOW / "slides.schema.yaml"


Validator = Callable[[Any, str], Any]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One pretraining run: its seed, its place in ``pretrain.seeds`` and its model name
    (``results/pretrain/<model>/``): ``pretrain.name`` for the first seed, else
    ``<name>_seed<N>``."""

    index: int
    seed: int
    model: str


def checkpoint_name(base: str, index: int, seed: int) -> str:
    """A model's or backbone's name on checkpoint ``index`` (of seed ``seed``): the configured
    name on the first, ``_seed<N>`` appended on the others (so adding seeds keeps the first
    one's results)."""
    return base if index == 0 else f"{base}_seed{seed}"


@dataclasses.dataclass
class Plan:
    """Everything the rules ask of the config and the sheet."""

    config: Config
    paths: Paths
    slides: pd.DataFrame
    datasets: dict[str, dict]
    backbones: dict[str, BackboneSpec]
    tasks: dict[str, TaskConfig]
    slide_tasks: dict[str, SlideTaskConfig]
    gpu: int
    notes: list[str] = dataclasses.field(default_factory=list)
    validate: Validator | None = None
    # backbone -> (the configured backbone it was made from, its checkpoint)
    families: dict[str, tuple[str, Checkpoint | None]] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        config: dict,
        *,
        local: bool = True,
        gpus_here: int | None = None,
        validate: Validator | None = None,
    ) -> Plan:
        """``config`` as Snakemake holds it. ``local``: jobs run on this machine (``--cores``),
        not sent to a cluster (``--jobs``). The dataclasses check every key, value and bound
        first (their errors name the key, the value and what is allowed); ``validate(data,
        schema_path)`` then checks the config and the sheet against their JSON schemas
        (the workflow passes Snakemake's ``snakemake.utils.validate``, which also fills
        defaults in place)."""
        from cytofm.hardware import gpu_request

        check_moved(config)
        cfg = from_mapping(Config, config)  # types, bounds and relations, named plainly
        if validate is not None:  # and the schema, as any tool reading the config would
            validate(config, str(SCHEMA))
        gpu = gpu_request(cfg.resources.gpu, local=local, gpus_here=gpus_here)
        plan = cls(cfg, Paths(cfg.results), pd.DataFrame(), {}, {}, {}, {}, gpu)
        plan.validate = validate
        plan.slides = plan._slide_table()
        plan.datasets = plan._datasets()
        if not plan.slide_ids and not plan.datasets:
            raise ConfigError(
                "nothing to do: set 'samples' to your slides.tsv, 'demo.enabled: true', or "
                "add 'datasets'"
            )
        plan.backbones = plan._backbones()
        plan.tasks = plan._tasks() if plan.backbones else {}
        plan.slide_tasks = plan._slide_tasks() if plan.backbones else {}
        plan._check_inductive()
        plan._check_stains()
        plan._note_missing_slides()
        return plan

    @property
    def sheet_name(self) -> str:
        return self.config.samples or "the demo sheet"

    def _slide_table(self) -> pd.DataFrame:
        from cytofm.sheet import load_sheet
        from cytofm.synthetic.demo import make_demo_sheet

        frames = []
        if self.config.demo.enabled:
            frames.append(make_demo_sheet(self.config.demo, self.paths.demo_slides_dir()))
        if self.config.samples:
            sheet = load_sheet(self.config.samples)
            if self.validate is not None:
                self.validate(sheet, str(SHEET_SCHEMA))
            frames.append(sheet)
        if not frames:  # no slides: a run on imported collections only
            empty = pd.DataFrame(columns=["slide_id", "path", "mpp", "split"])
            return empty.set_index("slide_id", drop=False)
        # object columns: a column one sheet lacks must not turn the other's integers into floats
        table = pd.concat([f.astype(object) for f in frames], ignore_index=True)
        dups = table["slide_id"][table["slide_id"].duplicated()].tolist()
        if dups:
            raise InputDataError(
                f"slide_id(s) {dups} appear in both the demo and {self.config.samples}"
            )
        table["mpp"] = pd.to_numeric(table["mpp"].mask(table["mpp"] == ""), errors="coerce")
        return table.set_index("slide_id", drop=False)

    @property
    def slide_ids(self) -> list[str]:
        return list(self.slides.index)

    @property
    def demo_ids(self) -> list[str]:
        demo = self.config.demo.enabled
        return [s for s in self.slide_ids if demo and s.startswith("demo_")]

    def _datasets(self) -> dict[str, dict]:
        from cytofm.config import DatasetConfig

        sets: dict[str, dict] = {}
        demo, cells = self.config.demo, self.config.cells
        if demo.enabled and demo.crops_per_class > 0:
            sets["demo_cells"] = {
                "path": self.paths.demo_crops(),
                "format": "csv",
                "mpp": demo.mpp,
                "patch_um": cells.patch_um,
                "patch_px": cells.patch_px,
                "meta_columns": ["stain"],  # the staining laboratory of each crop's slide
            }
        for name, entry in self.config.datasets.items():
            sets[name] = {k: v for k, v in entry.to_dict().items() if k != "name"}
        for name, entry in sets.items():
            from_mapping(DatasetConfig, {"name": name, **entry}, f"datasets.{name}")
        _refuse_aliases(sets)
        return sets

    # ------------------------------------------------------------------------ pretraining

    @property
    def pretrain(self):
        return self.config.pretrain

    @functools.cached_property
    def checkpoints(self) -> list[Checkpoint]:
        """One per ``pretrain.seeds`` entry (none when pretraining is off)."""
        if not self.pretrain.enabled:
            return []
        name = self.pretrain.name
        return [
            Checkpoint(i, int(seed), checkpoint_name(name, i, int(seed)))
            for i, seed in enumerate(self.pretrain.seeds)
        ]

    def checkpoint(self, model: str) -> Checkpoint:
        for ck in self.checkpoints:
            if ck.model == model:
                return ck
        raise KeyError(f"no pretraining run named {model!r}")

    def pretrain_params(self, model: str) -> dict:
        """The pretrain section as the job of checkpoint ``model`` runs it: its seed alone."""
        seed = self.checkpoint(model).seed
        return dataclasses.replace(self.pretrain, seeds=(seed,)).to_dict()

    def checkpoint_of(self, backbone: str) -> Checkpoint | None:
        """The checkpoint a backbone is built on (None: not on this config's pretraining)."""
        return self.families.get(backbone, (backbone, None))[1]

    def checkpoint_groups(self) -> dict[str, list]:
        """backbone -> [the configured backbone, checkpoint index]: the summaries and paired
        comparisons pool a configured backbone's checkpoints (index 0 for one without)."""
        return {b: [family, ck.index if ck else 0] for b, (family, ck) in self.families.items()}

    @functools.cached_property
    def pretrain_slides(self) -> list[str]:
        """Slides whose cells/tiles pretraining reads: those of the chosen splits."""
        pre = self.pretrain
        if not pre.enabled or not {"cells", "tiles"} & set(pre.sources):
            return []
        if "split" in self.slides.columns and pre.splits and self.slide_ids:
            return [s for s in self.slide_ids if self.slides.loc[s, "split"] in pre.splits]
        return self.slide_ids

    @functools.cached_property
    def pretrain_stores(self) -> list[str]:
        """Patch stores pretraining reads: per-slide cells/tiles of the chosen splits, datasets."""
        if not self.pretrain.enabled:
            return []
        stores = []
        for source in self.pretrain.sources:
            if source in ("cells", "tiles"):
                stores += [self.paths.store(source, s) for s in self.pretrain_slides]
            elif source in self.datasets:
                stores.append(self.paths.dataset(source))
            else:
                raise ConfigError(
                    f"pretrain.sources entry {source!r} is not 'cells', 'tiles' or a dataset "
                    f"name ({sorted(self.datasets)})"
                )
        if not stores:
            raise ConfigError(
                "pretraining has no input: no slide has a split in pretrain.splits "
                f"{list(self.pretrain.splits)}"
            )
        return stores

    @functools.cached_property
    def knn_store(self) -> list[str]:
        name = self.pretrain.probe.dataset
        if self.pretrain.enabled and name in self.datasets:
            return [self.paths.dataset(name)]
        return []

    def probe_task(self) -> TaskConfig:
        """The task whose split the pretraining probe uses: the first evaluating the probe
        dataset, else one with the default split settings."""
        name = self.pretrain.probe.dataset
        probe = TaskConfig(name=name or "probe", dataset=name or "probe")
        split_keys = ("name", "label", "group", "split", "val_fraction", "test_fraction",
                      "split_seed")  # fmt: skip
        for task in self.tasks.values():
            if task.dataset == name:  # its split only: other task settings never rerun it
                return dataclasses.replace(probe, **{k: getattr(task, k) for k in split_keys})
        return probe

    def held_out(self) -> dict[str, list[dict]]:
        """Dataset store -> the tasks evaluated on it, whose test rows pretraining leaves out."""
        if self.pretrain.transductive:
            return {}
        out = {}
        for source in self.pretrain.sources:
            if source in self.datasets:
                tasks = [t.to_dict() for t in self.tasks.values() if t.dataset == source]
                if tasks:
                    out[self.paths.dataset(source)] = tasks
        return out

    def _check_inductive(self) -> None:
        """Refuse a config whose pretraining reads slides a slide task cross-validates
        (unless pretrain.transductive); dataset test rows are left out by the pretraining job
        itself (:meth:`held_out`)."""
        from cytofm.inductive import content_leak_message, content_leaks, leak_message, slide_leaks

        if not self.pretrain.enabled or self.pretrain.transductive or not self.pretrain_slides:
            return
        cohorts = {t: [r["slide_id"] for r in self.cohort(t)] for t in self.slide_tasks}
        leaks = slide_leaks(self.pretrain_slides, cohorts)
        if leaks:
            kinds = [k for k in ("cells", "tiles") if k in self.pretrain.sources]
            stores = {s: self.paths.store(kinds[0], s) for slides in leaks.values() for s in slides}
            raise InputDataError(leak_message(leaks, stores, self.pretrain.sources))
        # the same file under another slide_id, or another slide of a cohort patient
        shared = content_leaks(
            self._sheet_rows(self.pretrain_slides),
            {t: self._sheet_rows(ids) for t, ids in cohorts.items()},
        )
        if shared:
            raise InputDataError(content_leak_message(shared, self.pretrain.sources))

    def _sheet_rows(self, ids: list[str]) -> list[dict]:
        """slide_id, path and (when the sheet has one) patient_id of these slides."""
        cols = [c for c in ("slide_id", "path", "patient_id") if c in self.slides.columns]
        return self.slides.loc[ids, cols].to_dict("records") if ids else []

    # -------------------------------------------------------------------- backbones, tasks

    def _backbones(self) -> dict[str, BackboneSpec]:
        specs = {n: s for n, s in self.config.backbones.items() if s.enabled}
        for name, spec in specs.items():
            like = specs.get(spec.like)
            if spec.kind == "random" and spec.like and (like is None or like.kind != "pretrained"):
                raise ConfigError(
                    f"backbones.{name}.like must name a backbone of kind 'pretrained', got "
                    f"{spec.like!r}"
                )
        if not self.pretrain.enabled:  # those that need this config's pretraining, said so
            needs = [
                n
                for n, s in specs.items()
                if s.kind == "pretrained" or (s.kind == "random" and s.like)
            ]
            if needs:
                self.notes.append(
                    f"pretrain.enabled is false: not evaluating backbones {needs} (they need "
                    "the pretrained model; load exported weights with kind 'timm' instead)"
                )
            specs = {n: s for n, s in specs.items() if n not in needs}
        return self._expand_checkpoints(specs)

    def _expand_checkpoints(self, specs: dict[str, BackboneSpec]) -> dict[str, BackboneSpec]:
        """A backbone on this config's pretraining becomes one per checkpoint: ``pretrained``
        reads checkpoint i, a ``random`` one ``like`` it copies checkpoint i's architecture
        with initialisation seed ``seed + i`` (its paired control)."""
        out: dict[str, BackboneSpec] = {}
        self.families = {}
        for name, spec in specs.items():
            on_pretrain = spec.kind == "pretrained" or (spec.kind == "random" and spec.like)
            if not on_pretrain or len(self.checkpoints) <= 1:
                out[name] = spec
                self.families[name] = (name, self.checkpoints[0] if on_pretrain else None)
                continue
            for ck in self.checkpoints:
                expanded = checkpoint_name(name, ck.index, ck.seed)
                if expanded in specs and expanded != name:
                    raise ConfigError(
                        f"backbones.{expanded} clashes with the name given to backbone "
                        f"{name!r} on pretraining seed {ck.seed} (pretrain.seeds); rename it"
                    )
                changes: dict[str, Any] = {"name": expanded}
                if spec.kind == "random":
                    changes.update(
                        like=checkpoint_name(spec.like, ck.index, ck.seed),
                        seed=spec.seed + ck.index,
                    )
                out[expanded] = dataclasses.replace(spec, **changes)
                self.families[expanded] = (name, ck)
        return out

    def _tasks(self) -> dict[str, TaskConfig]:
        tasks = {}
        for name, task in self.config.evaluate.tasks.items():
            if task.dataset == "demo_cells" and not self.config.demo.enabled:
                continue  # the demo's own task, inherited from config.yaml by other configs
            if task.dataset not in self.datasets:
                raise ConfigError(
                    f"evaluate.tasks.{name}.dataset {task.dataset!r} is not an imported dataset "
                    f"({sorted(self.datasets)}); add it under 'datasets'"
                )
            tasks[name] = task
        return tasks

    def _slide_tasks(self) -> dict[str, SlideTaskConfig]:
        """Slide-level (attention MIL) tasks; a demo-only task is left out when the demo is
        off."""
        tasks: dict[str, SlideTaskConfig] = {}
        for name, task in self.config.evaluate.slide_tasks.items():
            if task.slides == "demo" and not self.config.demo.enabled:
                continue
            self._check_slide_task(name, task)
            tasks[name] = task
            self.slide_tasks = tasks
            self._check_cohort(name, task)
        return tasks

    def _check_slide_task(self, name: str, task: SlideTaskConfig) -> None:
        s = f"evaluate.slide_tasks.{name}"
        if name in self.tasks:
            raise ConfigError(f"{s}: the name is also a patch-level task; rename one of them")
        sources = self.config.embed.sources
        if task.instances not in sources:
            raise ConfigError(
                f"{s}.instances is {task.instances!r}, but embed.sources {list(sources)} does "
                f"not embed them; add {task.instances!r} to embed.sources"
            )
        if task.label not in self.slides.columns:
            raise ConfigError(
                f"{s}.label {task.label!r} is not a column of the sample sheet "
                f"({self.sheet_name}); its columns are {list(self.slides.columns)}"
            )
        if task.cell_task and task.cell_task not in self.tasks:
            raise ConfigError(
                f"{s}.cell_task {task.cell_task!r} is not a cell task of evaluate.tasks "
                f'({sorted(self.tasks)}); name one of them, or "" for no per-cell classes'
            )
        if task.cell_task and self.tasks[task.cell_task].split == "leave_one_out":
            raise ConfigError(
                f"{s}.cell_task {task.cell_task!r} holds out each value of a column in turn and "
                "keeps no final model; name a cell task with a derived or given split"
            )
        if task.cell_task and task.instances != "cells":
            raise ConfigError(
                f"{s}.cell_task labels cells, but the task's bags hold {task.instances}; "
                'set cell_task: ""'
            )

    def _check_cohort(self, name: str, task: SlideTaskConfig) -> None:
        from cytofm.labels import check_labels

        s = f"evaluate.slide_tasks.{name}"
        cohort = self.cohort(name)
        check_labels(
            [row["label"] for row in cohort],
            [row["slide_id"] for row in cohort],
            source=f"column {task.label!r} of {self.sheet_name}",
            key=s,
            declared=task.classes,
        )
        labels = {row["label"] for row in cohort}
        if len(labels) < 2:
            raise ConfigError(
                f"{s}: the labelled slides hold {len(labels)} class(es) {sorted(labels)} in "
                f"column {task.label!r}; attention MIL needs at least two"
            )

    def sheet_value(self, slide: str, column: str) -> str:
        """A sheet cell as a string, '' when the column is missing or the cell is empty."""
        if column not in self.slides.columns:
            return ""
        value = self.slides.loc[slide, column]
        return "" if pd.isna(value) else str(value).strip()

    def cohort(self, name: str) -> list[dict]:
        """The slides of a slide task (those with a label) with what the MIL job needs."""
        task = self.slide_tasks[name]
        ids = self.demo_ids if task.slides == "demo" else self.slide_ids
        rows = []
        for s in ids:
            label = self.sheet_value(s, task.label)
            if not label:
                continue  # unlabelled slides are not part of the task
            mpp = self.slides.loc[s, "mpp"]
            rows.append(
                {
                    "slide_id": s,
                    "label": label,
                    "group": self.sheet_value(s, task.group),
                    "path": str(self.slides.loc[s, "path"]),
                    "mpp": None if pd.isna(mpp) else float(mpp),
                    "truth": self.sheet_value(s, "cell_truth"),
                }
            )
        return rows

    def predict_slides(self, name: str) -> list[str]:
        """Slides of the sheet with no label for a slide task: its final model scores them
        (``slides: demo`` limits what the model is trained on, not what it is applied to)."""
        label, missing = self.slide_tasks[name].label, self.missing_slides
        return [s for s in self.slide_ids if not self.sheet_value(s, label) and s not in missing]

    def predict_inputs(self, stask: str, backbone: str, slide: str) -> dict[str, str]:
        task = self.slide_tasks[stask]
        files = {
            **self.features_made_of(backbone),
            "model": self.paths.abmil_dir(stask, backbone),
            "features": self.slide_features_input(backbone, task.instances, slide),
            "instances": self.paths.store(task.instances, slide),
        }
        if task.cell_task:
            files["cell_head"] = self.paths.cell_head(task.cell_task, backbone)
        return files

    def cell_head_targets(self) -> list[str]:
        """Every cell task's final linear head on every backbone (a leave-one-out task is an
        evaluation of robustness only: it has no single split to fit one on)."""
        return [
            self.paths.cell_head(t, b)
            for t, task in self.tasks.items()
            if task.split != "leave_one_out"
            for b in self.backbones
        ]

    def predict_targets(self) -> list[str]:
        """Per slide task with unlabelled slides: their predictions (every backbone) and the
        task's table."""
        p, out = self.paths, []
        for t in self.slide_tasks:
            slides = self.predict_slides(t)
            if not slides:
                continue
            out += [
                f(t, b, s)
                for b in self.backbones
                for s in slides
                for f in (p.predict, p.predict_attention, p.predict_heatmap)
            ]
            out.append(p.predict_table(t))
        return out

    def mil_inputs(self, stask: str, backbone: str) -> dict[str, Any]:
        """Per cohort slide: its feature store and patch store (same order as the cohort),
        the slide file (for the heatmap thumbnail) and any cell truth table; for a pretrained
        backbone, its folder (the record of what pretraining read is checked there)."""
        kind = self.slide_tasks[stask].instances
        cohort = self.cohort(stask)
        missing = self.missing_slides
        pretrained = self.pretrained_dir(backbone)
        extra = (
            {"pretrained": pretrained}
            if pretrained and self.backbones[backbone].kind == "pretrained"
            else {}
        )
        return {
            **extra,
            **self.features_made_of(backbone),
            # the manifests of the embedding jobs that wrote the cohort's features
            "features": sorted(
                {self.slide_features_input(backbone, kind, r["slide_id"]) for r in cohort}
            ),
            "instances": [self.paths.store(kind, r["slide_id"]) for r in cohort],
            "slides": [
                f
                for r in cohort
                if r["slide_id"] not in missing
                for f in (self.specimen_fields(r["slide_id"]) or [r["path"]])
            ],
            "truth": [r["truth"] for r in cohort if r["truth"]],
        }

    def mil_features(self, stask: str, backbone: str) -> list[str]:
        """The cohort's feature stores, in the cohort's order."""
        kind = self.slide_tasks[stask].instances
        return [self.paths.features(backbone, kind, r["slide_id"]) for r in self.cohort(stask)]

    def mil_exposure(self, stask: str, backbone: str) -> dict:
        """What the backbone's pretraining saw of a slide task's cohort, for its result JSON."""
        from cytofm.inductive import exposure, slide_leaks

        spec = self.backbones[backbone]
        if spec.kind != "pretrained":
            return exposure(None, spec.kind, None)
        cohort = [r["slide_id"] for r in self.cohort(stask)]
        seen = slide_leaks(self.pretrain_slides, {"t": cohort}).get("t", [])
        return {
            "pretraining": "this config's pretraining",
            "transductive": self.pretrain.transductive,
            "cohort_slides_pretrained_on": len(seen),
        }

    def embed_sources(self) -> list[tuple[str, str]]:
        """(kind, name) of every store that gets features."""
        out = []
        for kind in self.config.embed.sources:
            names = list(self.datasets) if kind == "datasets" else self.slide_ids
            out += [(kind, n) for n in names]
        return out

    @functools.cached_property
    def _shards(self) -> tuple[list[list[str]], dict[str, str]]:
        """Slides cut into embedding jobs of ``embed.slides_per_job`` in the sheet's order:
        (slides of each shard, slide -> shard name)."""
        size = self.config.embed.slides_per_job
        ids = self.slide_ids
        shards = [ids[i : i + size] for i in range(0, len(ids), size)]
        return shards, {s: f"{i:05d}" for i, group in enumerate(shards) for s in group}

    def shard_names(self) -> list[str]:
        return [f"{i:05d}" for i in range(len(self._shards[0]))]

    def shard_slides(self, shard: str) -> list[str]:
        try:
            return self._shards[0][int(shard)]
        except (ValueError, IndexError):
            raise InputDataError(
                f"embedding shard {shard!r} does not exist: the sheet's {len(self.slide_ids)} "
                f"slides make {len(self._shards[0])} of {self.config.embed.slides_per_job}"
            ) from None

    def slide_features_input(self, backbone: str, kind: str, slide: str) -> str:
        """What a job reading a slide's features waits for: the manifest of the embedding job
        that writes them (the store itself is read by its path, PATHS.features). The rules
        mark it ``ancient``: a slide added to a job's slides rewrites the manifest without
        changing the other slides' features, so it must not rerun their readers. What the
        features are made of - the backbone's folder, the slide's patch store, the precision
        - is among the readers' own inputs and params (:meth:`features_made_of`)."""
        return self.paths.features_shard(backbone, kind, self._shards[1][slide])

    def features_made_of(self, backbone: str) -> dict[str, str]:
        """The backbone's built folder (remade when its weights change): an input of every job
        reading slides' features, beside their patch stores."""
        return {"backbone": self.paths.backbone(backbone)}

    def shard_inputs(self, backbone: str, kind: str, shard: str) -> dict[str, Any]:
        """An embedding job of slides: the backbone's files and each slide's patch store."""
        slides = self.shard_slides(shard)
        return {
            **self.backbone_inputs(backbone),
            "backbone": self.paths.backbone(backbone),
            "stores": [self.paths.store(kind, s) for s in slides],
        }

    def shard_outputs(self, backbone: str, kind: str, shard: str) -> list[str]:
        return [self.paths.features(backbone, kind, s) for s in self.shard_slides(shard)]

    def pretrained_dir(self, backbone: str) -> str | None:
        """The exported model folder a backbone reads (pretrained, or random 'like' one)."""
        ck = self.checkpoint_of(backbone)
        return self.paths.pretrained(ck.model) if ck else None

    def model_card_inputs(self) -> dict[str, str | list[str]]:
        """What the pretrained backbone's card reports: the probe and every task's summary."""
        p, name = self.paths, self.pretrain.name
        files: dict[str, str | list[str]] = {"backbone": p.pretrained(name)}
        if self.knn_store:
            files["probe"] = p.probe(name)
        files["summaries"] = [p.summary(t) for t in [*self.tasks, *self.slide_tasks]]
        return files

    def model_card_backbones(self) -> list[str]:
        """The backbones the card's results table shows: those built from the pretrained
        folder (the weights themselves and their random controls)."""
        return [b for b in self.first_checkpoints() if self.pretrained_dir(b)]

    @property
    def pretrained_on_demo(self) -> bool:
        return bool(set(self.pretrain_slides) & set(self.demo_ids))

    def backbone_inputs(self, backbone: str) -> dict[str, str]:
        """Files a backbone is built from, so new weights re-embed and re-evaluate."""
        from cytofm.config.sections import BACKBONE_KINDS_BUILTIN

        spec = self.backbones[backbone]
        files = {}
        if self.pretrained_dir(backbone):
            files["pretrained"] = self.pretrained_dir(backbone)
        if spec.kind == "timm" or (spec.kind not in BACKBONE_KINDS_BUILTIN and spec.weights):
            files["weights"] = spec.weights
        return files

    def evaluate_inputs(self, task: str, backbone: str, protocol: str) -> dict[str, str]:
        from cytofm.eval.protocols import PROTOCOLS

        dataset = self.tasks[task].dataset
        files = {"dataset": self.paths.dataset(dataset)}
        # the backbone's files: LoRA trains from them; every protocol reads what pretraining saw
        files.update(self.backbone_inputs(backbone))
        if PROTOCOLS[protocol].needs_features:
            files["features"] = self.paths.features(backbone, "datasets", dataset)
        return files

    def task_results(self, task: str) -> list[str]:
        """Result files a task's summary reads (every backbone, every protocol)."""
        if task in self.slide_tasks:
            return [self.paths.abmil(task, b) for b in self.backbones]
        protocols = self.tasks[task].protocols
        return [
            self.paths.result(task, b, p)
            for b in self.backbones
            for p in protocols
            if self.runs_protocol(b, p)
        ]

    def runs_protocol(self, backbone: str, protocol: str) -> bool:
        """Whether ``protocol`` applies to ``backbone``: one that trains the backbone (LoRA)
        needs a network (not hand-made measurements); with ``evaluate.lora.checkpoints: first``
        LoRA runs on the first pretraining checkpoint only."""
        from cytofm.config.sections import KINDS_WITHOUT_NETWORK
        from cytofm.eval.protocols import PROTOCOLS

        kind = self.backbones[backbone].kind
        if protocol == "lora" and self.config.evaluate.lora.checkpoints == "first":
            ck = self.checkpoint_of(backbone)
            if ck is not None and ck.index > 0:
                return False  # fine-tuned on the first checkpoint only
        return PROTOCOLS[protocol].needs_features or kind not in KINDS_WITHOUT_NETWORK

    # ------------------------------------------------------------------------------ slides

    def _check_stains(self) -> None:
        """A stain name the detector does not know fails before any job."""
        from cytofm.cells.stain import stain_mode

        if "stain" not in self.slides.columns:
            return
        bad = {}
        for sid, value in self.slides["stain"].items():
            try:
                stain_mode(None if pd.isna(value) else str(value), self.config.cells.stain)
            except ValueError as e:
                bad[sid] = str(e)
        if bad:
            raise InputDataError(
                f"{self.config.samples}: column 'stain' of slide(s) {sorted(bad)[:10]}: "
                + next(iter(bad.values()))
            )

    @functools.cached_property
    def missing_slides(self) -> list[str]:
        """Sheet slides whose local file is missing: their jobs fail alone, naming the file."""
        from cytofm.sheet import is_remote
        from cytofm.wsi.fields import field_files, is_specimen

        def present(path: str) -> bool:
            if is_specimen(path):
                return os.path.isdir(path) or bool(field_files(path))
            return is_remote(path) or os.path.isfile(path)

        demo = set(self.demo_ids)
        return [s for s in self.slide_ids if s not in demo and not present(self.slide_file(s))]

    def _note_missing_slides(self) -> None:
        missing = self.missing_slides
        if missing:
            listed = ", ".join(f"{s} ({self.slides.loc[s, 'path']})" for s in missing[:10])
            self.notes.append(
                f"{len(missing)} slide file(s) of {self.config.samples} not found: {listed}"
                + (" ..." if len(missing) > 10 else "")
                + "; their jobs will fail, the other slides run. Fix the 'path' column or "
                "remove the rows."
            )

    def slide_file(self, slide: str) -> str:
        return str(self.slides.loc[slide, "path"])

    @functools.cached_property
    def truth_slides(self) -> list[str]:
        """Slides whose sheet row names a ``cell_truth`` table (and whose file is there):
        their detections are scored against it (rule ``detection_eval``)."""
        if "cell_truth" not in self.slides.columns:
            return []
        named = self.slides["cell_truth"].fillna("").astype(str).str.strip() != ""
        missing = set(self.missing_slides)
        return [s for s in self.slides.index[named.to_numpy()] if s not in missing]

    def detection_inputs(self) -> dict[str, list[str]]:
        ids = self.truth_slides
        return {
            "cells": [self.paths.cells(s) for s in ids],
            "truth": [self.sheet_value(s, "cell_truth") for s in ids],
        }

    def detection_slides(self) -> list[dict]:
        """Per truth slide, what its overlay picture reads the slide with."""
        backend = self.config.cells.backend
        return [
            {"path": self.slide_file(s), "mpp": self.slide_mpp(s), "backend": backend}
            for s in self.truth_slides
        ]

    def specimen_fields(self, slide: str) -> list[str] | None:
        """The field images of a specimen row (a folder or glob), None for a slide file: the
        job's inputs, so adding a field reruns that specimen only."""
        from cytofm.wsi.fields import field_files, is_specimen

        path = self.slide_file(slide)
        return [str(f) for f in field_files(path)] if is_specimen(path) else None

    def slide_stain(self, slide: str) -> str:
        """The sheet's stain of the slide ("" = cells.stain)."""
        return self.sheet_value(slide, "stain") if "stain" in self.slides.columns else ""

    def slide_mpp(self, slide: str) -> float | None:
        """The sheet's mpp override, or None to read it from the file."""
        value = self.slides.loc[slide, "mpp"]
        return None if pd.isna(value) else float(value)

    def dataset_source(self, dataset: str) -> list[str] | str:
        """The demo crops' table (made by a rule first); other collections are read as is."""
        if dataset == "demo_cells" and self.config.demo.enabled:
            return self.datasets[dataset]["path"]
        return []

    # ---------------------------------------------------------------------------- report

    def first_checkpoints(self) -> list[str]:
        """The backbones on the first pretraining checkpoint, and those without one: what the
        report draws maps of (one per configured backbone)."""
        return [b for b in self.backbones if (ck := self.checkpoint_of(b)) is None or ck.index == 0]

    def report_embeddings(self) -> dict:
        """task -> backbone -> the dataset's feature store, the dataset store and the task's
        batch column (leave-one-out tasks map the same rows as their dataset's other tasks:
        they get none); the first checkpoint's features only."""
        if "datasets" not in self.config.embed.sources:
            return {}
        return {
            t.name: {
                b: {
                    "features": self.paths.features(b, "datasets", t.dataset),
                    "dataset": self.paths.dataset(t.dataset),
                    "batch": t.batch,
                }
                for b in self.first_checkpoints()
            }
            for t in self.tasks.values()
            if t.split != "leave_one_out"
        }

    def report_slide_features(self) -> dict:
        """backbone -> slide -> cell feature store (when cells are embedded; the first
        checkpoint's)."""
        if "cells" not in self.config.embed.sources:
            return {}
        return {
            b: {s: self.paths.features(b, "cells", s) for s in self.slide_ids}
            for b in self.first_checkpoints()
        }

    def report_slide_meta(self) -> dict:
        """slide -> the sheet's stain (the only metadata the report shows)."""
        if "stain" not in self.slides.columns:
            return {}
        return {s: {"stain": self.sheet_value(s, "stain")} for s in self.slide_ids}

    def report_trees(self) -> dict:
        """task -> its label tree, screening node and metrics CSV, for tasks with one."""
        return {
            name: {
                "hierarchy": task.hierarchy,
                "screening": task.screening,
                "csv": self.paths.hierarchy(name),
            }
            for name, task in self.tasks.items()
            if task.hierarchy
        }

    def report_robustness(self) -> dict:
        """task -> backbone -> its robustness JSON, for tasks with a ``batch`` column."""
        return {
            name: {b: self.paths.robustness(name, b) for b in self.backbones}
            for name, task in self.tasks.items()
            if task.batch
        }

    def report_calibration(self) -> dict:
        """task -> its calibration table and reliability diagrams, for every task."""
        return {
            name: {
                "csv": self.paths.calibration(name),
                "png": self.paths.task_figure(name, "reliability"),
            }
            for name in [*self.tasks, *self.slide_tasks]
        }

    def report_inputs(self) -> dict[str, list[str]]:
        p = self.paths
        all_tasks = [*self.tasks, *self.slide_tasks]
        files = {
            "results": [f for t in all_tasks for f in self.task_results(t)],
            "hierarchy": [tree["csv"] for tree in self.report_trees().values()],
            "calibration": [f for c in self.report_calibration().values() for f in c.values()],
            "robustness": [f for r in self.report_robustness().values() for f in r.values()],
            "abmil": [p.abmil_dir(t, b) for b in self.backbones for t in self.slide_tasks],
            "qc": [p.qc(s) for s in self.slide_ids],
            "detection": [p.cells_summary(s) for s in self.slide_ids],
            "truth": [p.detection()] if self.truth_slides else [],
            "comparisons": [p.comparisons(t) for t in all_tasks],
            "features": [
                e["features"] for t in self.report_embeddings().values() for e in t.values()
            ]
            + sorted(
                {
                    self.slide_features_input(b, "cells", s)
                    for b, d in self.report_slide_features().items()
                    for s in d
                }
            ),
        }
        if self.pretrain.enabled:
            files["pretrained"] = [p.pretrained(ck.model) for ck in self.checkpoints]
        predicted = [t for t in self.slide_tasks if self.predict_slides(t)]
        if predicted:
            files["predictions"] = [p.predict_table(t) for t in predicted]
        return files

    # --------------------------------------------------------------------------- targets

    def targets(self) -> list[str]:
        p, ids = self.paths, self.slide_ids
        out = [f(s) for f in (p.tiles, p.qc, p.cells) for s in ids]
        out += [p.dataset(d) for d in self.datasets]
        for ck in self.checkpoints:
            out.append(p.pretrained(ck.model))
            if self.knn_store:
                out.append(p.probe(ck.model))
        if self.pretrain.enabled:
            out.append(p.model_card(self.pretrain.name))
        for b in self.backbones:
            for kind in self.config.embed.sources:
                if kind == "datasets":
                    out += [p.features(b, kind, d) for d in self.datasets]
                else:
                    out += [p.features_shard(b, kind, n) for n in self.shard_names()]
        all_tasks = [*self.tasks, *self.slide_tasks]
        for t in all_tasks:
            out += self.task_results(t)
        out += [p.summary(t) for t in all_tasks]
        out += self.cell_head_targets()
        out += [f for r in self.report_robustness().values() for f in r.values()]
        out += self.predict_targets()
        out += self.export_targets()
        if self.config.report.enabled:
            out.append(p.report())
        if self.config.demo.enabled:
            out.append(p.demo_sheet())
        if self.truth_slides:
            out += [p.detection(), p.detection_overlays()]
        return out

    def export_targets(self) -> list[str]:
        """GeoJSON of every slide and HDF5 features of every slide and backbone, as
        ``export`` asks (specimens of fields are left out: no one image holds them)."""
        p, cfg = self.paths, self.config.export
        slides = [s for s in self.slide_ids if self.specimen_fields(s) is None]
        out = [p.geojson(s) for s in slides] if cfg.geojson else []
        if cfg.hdf5:
            kinds = [k for k in self.config.embed.sources if k in ("cells", "tiles")]
            out += [
                p.features_h5(layout, b, kind, s)
                for b in self.backbones
                for kind in kinds
                for s in slides
                for layout in ("trident", "stamp")
            ]
        return out

    def wildcard_constraints(self) -> dict[str, str]:
        import re

        def either(names) -> str:
            return "|".join(re.escape(n) for n in names) or "(?!)"

        protocols = sorted({p for t in self.tasks.values() for p in t.protocols})
        return {
            # ids of the sheet's grammar, not the sheet's list of ids (cytofm/sheet.py)
            "slide": ID_PATTERN,
            "dataset": either(self.datasets),
            "model": either([ck.model for ck in self.checkpoints] or [self.pretrain.name]),
            "backbone": either(self.backbones),
            "task": either(self.tasks),
            "stask": either(self.slide_tasks),
            "protocol": either(protocols),
            "kind": "datasets|cells|tiles",
            "source": f"{either(self.datasets)}|{ID_PATTERN}",
            "shard": r"\d+",
        }

    # ------------------------------------------------------------------------- resources

    def _rule(self, rule: str):
        return getattr(self.config.resources, rule)

    def threads(self, rule: str) -> int:
        set_ = self._rule(rule)
        if set_ is not None and set_.threads is not None:
            return set_.threads
        if rule in ("embed", "evaluate"):
            # jobs feeding a GPU get threads for data loading; on CPU, one thread per job lets
            # small jobs (dominated by start-up) run side by side
            return 4 if self.gpu else 1
        return RESOURCE_DEFAULTS[rule][0]

    def mem_mb(self, rule: str) -> int:
        set_ = self._rule(rule)
        return set_.mem_mb if set_ and set_.mem_mb is not None else RESOURCE_DEFAULTS[rule][1]

    def runtime(self, rule: str) -> int:
        set_ = self._rule(rule)
        return set_.runtime if set_ and set_.runtime is not None else RESOURCE_DEFAULTS[rule][2]

    def nodes(self, rule: str) -> int:
        """Nodes of a rule's job (``resources.<rule>.nodes``; pretrain only), else 1."""
        set_ = self._rule(rule)
        return int(set_.nodes) if set_ is not None and set_.nodes else 1

    def slurm_nodes(self, rule: str) -> dict:
        """What a job of several nodes asks the SLURM plugin for: the nodes, the GPUs of each
        node (``gres``, as the plugin's ``gpu`` counts the job's total) and one task per node
        for ``srun`` to start a ``torchrun`` in; nothing for a one-node job."""
        nodes = self.nodes(rule)
        if nodes == 1:
            return {}
        gpus = int(self.gpus(rule) or 0)
        extra = {"nodes": nodes, "slurm_extra": "--ntasks-per-node=1"}
        return {**extra, "gres": f"gpu:{gpus}"} if gpus else extra

    def gpus(self, rule: str) -> int:
        """GPUs a GPU rule's job asks for: ``resources.<rule>.gpus``, else 1 (0 without)."""
        set_ = self._rule(rule)
        if not self.gpu or set_ is None or set_.gpus is None:
            return self.gpu
        return set_.gpus


def _refuse_aliases(datasets: dict[str, dict]) -> None:
    """Two names for the same images would let pretraining read, under one, the test rows a
    task holds out under the other."""
    from cytofm.inductive import dataset_aliases

    for first, second in dataset_aliases(datasets):
        entry = datasets[second]
        what = entry["path"] + (f" with query {entry['query']!r}" if entry.get("query") else "")
        raise ConfigError(
            f"datasets '{first}' and '{second}' import the same images ({what}). Under two "
            "names, pretraining could read the test rows a task leaves out of the other. Fix: "
            f"keep one name and point every task, pretrain.sources entry and probe at it (or "
            "give the second a query that selects other rows)."
        )
