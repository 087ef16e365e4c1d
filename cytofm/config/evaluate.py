"""The config sections of evaluation (``evaluate``): cell-level tasks on imported datasets
(and the shape of their label hierarchies), slide-level tasks, the settings of the linear,
kNN, LoRA and attention-MIL protocols, and the demo's shipped tasks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cytofm import registry
from cytofm.config.common import METRICS, PRECISIONS, PROTOCOLS, _check_name, _tuples
from cytofm.config.fields import Section, option
from cytofm.errors import ConfigError

__all__ = [
    "EvalConfig",
    "KnnConfig",
    "LinearConfig",
    "LoraConfig",
    "MilConfig",
    "SlideTaskConfig",
    "TaskConfig",
    "check_hierarchy_spec",
]


def check_hierarchy_spec(spec: object, where: str) -> None:
    """The shape of a ``hierarchy`` mapping (names are checked against the classes later, when
    the dataset's classes are known); raises ValueError naming the bad entry."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping of node -> [classes] or node -> {{...}}")
    for node, children in spec.items():
        if not isinstance(node, str) or not node:
            raise ValueError(f"{where}: node names are non-empty strings, got {node!r}")
        if isinstance(children, Mapping):
            if not children:
                raise ValueError(f"{where}.{node} is empty")
            check_hierarchy_spec(children, f"{where}.{node}")
        elif isinstance(children, (list, tuple)):
            if not children or not all(isinstance(c, str) and c for c in children):
                raise ValueError(f"{where}.{node} must list class names, got {children!r}")
        else:
            raise ValueError(
                f"{where}.{node} must be a list of classes or a mapping of nodes, got {children!r}"
            )


@dataclasses.dataclass(frozen=True)
class TaskConfig(Section):
    """a classification task on an imported labelled collection"""

    name: str = option(doc="the entry's key")
    dataset: str = option(doc="a name under datasets (or demo_cells, made by the demo)")
    label: str = option("labels", "array of integer labels in the dataset store")
    group: str = option(
        "groups", "array of groups (patient/slide/batch) that never straddle splits"
    )
    split: str = option(
        "auto",
        "auto (the dataset's split column if it has one, else derived) | given | derived | "
        "leave_one_out (each value of hold_out is the test set once)",
        choices=("auto", "given", "derived", "leave_one_out"),
    )
    hold_out: str = option(
        "",
        "leave_one_out: the dataset column whose values are held out in turn (a meta column "
        "such as stain or site, or groups)",
    )
    batch: str = option(
        "",
        "a dataset column (stain, site, scanner...) for the batch-leak probe and robustness "
        "index of each backbone ('' = none)",
    )
    protocols: tuple = option(
        PROTOCOLS, "any of linear, knn, fewshot, lora, or one a package adds", items="string"
    )
    shots: tuple = option(
        (1, 2, 4, 8, 16, 50),
        "examples per class for fewshot (and lora unless lora_shots is set)",
        items="integer",
        minimum=1,
    )
    lora_shots: tuple = option(
        (),
        "examples per class for lora ([] = shots): each run takes the protocol's 50 + 100 x k "
        "steps per learning rate",
        items="integer",
        minimum=1,
    )
    seeds: tuple = option(
        (0, 1, 2),
        "one run per seed (shot sampling, LoRA initialisation and order)",
        items="integer",
    )
    fractions: tuple = option(
        (),
        "linear probe on these shares of the training split ([] = none)",
        items="number",
        above=0,
        maximum=1,
    )
    val_fraction: float = option(
        0.2,
        "derived split: fraction for validation (chooses C and LoRA lr)",
        minimum=0,
        below=1,
    )
    test_fraction: float = option(
        0.2, "derived split: fraction held out for the reported metrics", above=0, below=1
    )
    split_seed: int = option(
        0, "derived split: seed (the split is shared by every backbone/protocol)"
    )
    hierarchy: dict = option(
        {},
        "class tree, node -> [classes] or node -> {nodes}: metrics per level and mistake "
        "severity ({} = none)",
        more="Every class of the dataset appears exactly once; a mapping of coarse names to "
        "lists of fine classes is the one-level case. See docs/evaluation.md (label trees).",
    )
    screening: str = option(
        "",
        "a node of hierarchy: its sensitivity at thresholds set on validation for 90% and 95% "
        "specificity is reported",
    )

    def check(self) -> None:
        s = f"evaluate.tasks.{self.name}"
        _check_name("task", self.name)
        try:
            check_hierarchy_spec(self.hierarchy, f"{s}.hierarchy")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.screening and not self.hierarchy:
            raise ConfigError(f"{s}.screening names a node of {s}.hierarchy, which is empty")
        bad = sorted(p for p in self.protocols if p not in registry.PROTOCOLS)
        if bad:
            raise ConfigError(
                f"{s}.protocols: unknown {bad}; choose from {registry.PROTOCOLS.names()}, or "
                'install a package that adds one ([project.entry-points."cytofm.protocols"])'
            )
        if not self.seeds:
            raise ConfigError(f"{s}.seeds must name at least one seed")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(f"{s}: val_fraction + test_fraction leave too little to train on")
        if self.batch and self.split == "leave_one_out":
            raise ConfigError(
                f"{s}.batch: the batch-leak probe trains on one split; set it on a task with a "
                "derived or given split (a leave-one-out task already tests each held-out value)"
            )
        if (self.split == "leave_one_out") != bool(self.hold_out):
            raise ConfigError(
                f"{s}: split: leave_one_out needs hold_out (the column whose values are held "
                f"out in turn), and hold_out needs split: leave_one_out; got split="
                f"{self.split!r}, hold_out={self.hold_out!r}"
            )
        _tuples(self, "protocols", "shots", "lora_shots", "seeds", "fractions")


@dataclasses.dataclass(frozen=True)
class SlideTaskConfig(Section):
    """a slide-level task: attention MIL over each slide's cached cell (or tile) features"""

    name: str = option(doc="the entry's key")
    label: str = option(
        "label", "sheet column holding the slide label (slides with it empty are left out)"
    )
    group: str = option(
        "patient_id",
        "sheet column; one patient's slides never straddle folds (missing = per slide)",
    )
    instances: str = option(
        "cells",
        "what a bag holds: cells | tiles (must be in embed.sources)",
        choices=("cells", "tiles"),
    )
    slides: str = option(
        "all",
        "cohort: all (every labelled sheet slide) | demo (synthetic slides only)",
        choices=("all", "demo"),
    )
    folds: int = option(3, "patient-grouped, label-stratified cross-validation folds", minimum=2)
    seeds: tuple = option((0, 1, 2), "one full cross-validation per seed", items="integer")
    truth_positive: tuple = option(
        (), "classes of the sheet's cell_truth tables attention should find", items="string"
    )
    classes: tuple = option(
        (),
        "the expected labels (any other is an error); [] = only catch likely typos",
        items="string",
    )
    cell_task: str = option(
        "",
        "a cell task (evaluate.tasks) whose final linear head labels the cells of predicted "
        'slides (per-cell class probabilities); "" = none',
    )

    def check(self) -> None:
        s = f"evaluate.slide_tasks.{self.name}"
        _check_name("task", self.name)
        if not self.seeds:
            raise ConfigError(f"{s}.seeds must name at least one seed")
        _tuples(self, "seeds", "truth_positive")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))


@dataclasses.dataclass(frozen=True)
class LinearConfig(Section):
    """logistic-regression probe (scikit-learn)"""

    Cs: tuple = option(
        (0.001, 0.01, 0.1, 1.0, 10.0),
        "inverse L2 strengths tried on val (logistic regression)",
        items="number",
        above=0,
    )
    max_iter: int = option(1000, "solver iterations of the logistic regression", minimum=1)

    def check(self) -> None:
        if not self.Cs:
            raise ConfigError("evaluate.linear.Cs must list at least one C, e.g. [0.1, 1, 10]")
        _tuples(self, "Cs")


@dataclasses.dataclass(frozen=True)
class KnnConfig(Section):
    """cosine kNN"""

    k: int = option(20, "neighbours of the cosine kNN", minimum=1)
    temperature: float = option(
        0.07,
        "each neighbour votes exp(cosine similarity / temperature) for its class (DINO, eva)",
        above=0,
    )


@dataclasses.dataclass(frozen=True)
class LoraConfig(Section):
    """LoRA fine-tuning with peft, as Dausort, Godelaine et al. do it"""

    rank: int = option(2, "LoRA rank (peft)", minimum=1)
    alpha: float = option(
        1.0, "LoRA scaling alpha (update scaled by alpha / sqrt(rank), or alpha / rank)", above=0
    )
    rslora: bool = option(
        True,
        "scale the update by alpha / sqrt(rank) (peft's use_rslora, as the protocol's code "
        "does); false: alpha / rank",
    )
    dropout: float = option(0.25, "dropout on the LoRA input", minimum=0, below=1)
    target_modules: tuple = option(
        ("q", "v"),
        "layers that get adapters; timm's fused qkv is split into q, k, v first (also: proj, "
        "fc1, fc2)",
        items="string",
    )
    lrs: tuple = option(
        (0.01, 0.003, 0.001, 0.0003, 0.0001),
        "learning-rate grid; the best on val is reported",
        items="number",
        above=0,
    )
    batch_size: int = option(32, "images per step", minimum=1)
    iters_per_shot: int = option(
        100, "k-shot runs take warm-up + this x k steps (150 at 1 shot, 5,050 at 50)", minimum=1
    )
    fraction_epochs: int = option(
        100, "runs on a share of the training split take warm-up + this many epochs", minimum=1
    )
    warmup_steps: int = option(
        50, "linear learning-rate warm-up, then cosine decay to min_lr", minimum=0
    )
    min_lr: float = option(0.000001, "final learning rate of the cosine", minimum=0)
    max_steps: int = option(
        0,
        "cap on steps per run (0 = the protocol's schedule; a cap is a reduced budget, marked "
        "in results)",
        minimum=0,
    )
    weight_decay: float = option(0.01, "AdamW weight decay of adapters and head", minimum=0)
    fractions: tuple = option(
        (),
        "LoRA on these shares of the training split too (Fig. 2 of Dausort, Godelaine et al.); "
        "GPU work",
        items="number",
        above=0,
        maximum=1,
    )
    checkpoints: str = option(
        "all",
        "all: fine-tune every pretraining checkpoint (pretrain.seeds) | first: the first only, "
        "whose LoRA rows then hold for that checkpoint",
        choices=("all", "first"),
        more="LoRA is the costly protocol; `first` keeps the other protocols' verdicts over "
        "every checkpoint while LoRA's say 'for this checkpoint'.",
    )
    device: str = option("auto", "auto | cpu | cuda ...")
    precision: str = option("auto", "auto (bf16 on GPU) | bf16 | fp32", choices=PRECISIONS)

    def check(self) -> None:
        s = "evaluate.lora"
        if not self.lrs:
            raise ConfigError(f"{s}.lrs must list at least one learning rate, e.g. [0.001]")
        if "qkv" in self.target_modules:
            raise ConfigError(
                f"{s}.target_modules: 'qkv' is split into separate 'q', 'k' and 'v' "
                "projections before the adapters go on; list those instead (the protocol: "
                "[q, v]; all of attention: [q, k, v, proj])"
            )
        _tuples(self, "target_modules", "lrs", "fractions")


@dataclasses.dataclass(frozen=True)
class MilConfig(Section):
    """attention MIL (gated attention, Ilse et al.) for slide tasks"""

    lr: float = option(0.0005, "AdamW learning rate", above=0)
    weight_decay: float = option(0.0001, "AdamW weight decay", minimum=0)
    max_epochs: int = option(100, "most passes over the training slides ...", minimum=1)
    min_epochs: int = option(
        20, "... at least this many (the best epoch is chosen from here on) ...", minimum=0
    )
    patience: int = option(
        10, "... stopping after this many epochs without a lower validation loss", minimum=1
    )
    batch_bags: int = option(
        1, "slides per step (more: padded and masked to the longest in the batch)", minimum=1
    )
    hidden: int = option(128, "width of the instance embedding", minimum=1)
    attn_dim: int = option(64, "width of the gated attention branch", minimum=1)
    dropout: float = option(0.25, "dropout on the instance embedding", minimum=0, below=1)
    balance: bool = option(True, "weight the loss by inverse slide-class frequency")
    top_k: int = option(
        16, "cells per slide in the top-attention montage (and top-k hit rate)", minimum=1
    )


_DEMO_TASK = {
    "demo_cells": {
        "dataset": "demo_cells",
        "label": "labels",
        "group": "groups",
        "split": "auto",
        "protocols": ["linear", "knn", "fewshot", "lora"],
        "shots": [1, 2, 4, 8, 16],
        "lora_shots": [1],
        "seeds": [0, 1, 2],
        "fractions": [0.1, 0.25, 0.5, 1.0],
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "split_seed": 0,
        # the synthetic classes follow a Pap smear: koilocytes are low-grade (HPV) changes
        "hierarchy": {
            "negative": ["squamous", "lymphocyte"],
            "abnormal": {"low_grade": ["koilocyte"], "high_grade": ["dysplastic"]},
        },
        "screening": "abnormal",
        # each crop's slide was stained in one of three laboratories: does it show?
        "batch": "stain",
    },
    # the same cells, each laboratory's slides held out in turn (leave-one-stain-out)
    "demo_stain_out": {
        "dataset": "demo_cells",
        "split": "leave_one_out",
        "hold_out": "stain",
        "protocols": ["linear", "knn"],
        "seeds": [0],
        "fractions": [],
    },
}
_DEMO_SLIDE_TASK = {
    "demo_abnormal": {
        "label": "abnormal",
        "group": "patient_id",
        "instances": "cells",
        "slides": "demo",
        "folds": 4,
        "seeds": [0, 1, 2, 3, 4, 5, 6, 7],
        "truth_positive": ["dysplastic"],
        "classes": ["0", "1"],
        "cell_task": "demo_cells",
    }
}


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """evaluation protocols (results/eval/<task>/<backbone>/<protocol>.json)"""

    tasks: dict[str, TaskConfig] = option(
        {},
        "name -> a classification task on an imported dataset",
        shipped=_DEMO_TASK,
    )
    slide_tasks: dict[str, SlideTaskConfig] = option(
        {},
        "name -> a slide-level task: attention MIL (abmil) over each slide's cells",
        shipped=_DEMO_SLIDE_TASK,
    )
    linear: LinearConfig = option(LinearConfig(), "logistic-regression probe")
    knn: KnnConfig = option(KnnConfig(), "cosine kNN")
    lora: LoraConfig = option(
        LoraConfig(), "LoRA fine-tuning (peft), the protocol of Dausort, Godelaine et al."
    )
    mil: MilConfig = option(MilConfig(), "attention MIL for slide tasks")
    select_metric: str = option(
        "balanced_accuracy",
        "what val selects on: accuracy | balanced_accuracy | macro_f1 | auroc",
        choices=METRICS,
    )
    bootstrap: int = option(1000, "bootstrap resamples of the test rows for the 95% CIs", minimum=1)
    conformal_alpha: float = option(
        0.1,
        "split-conformal prediction sets for 1 - alpha coverage, calibrated on the validation "
        "rows set apart by conformal_share (0 = none)",
        minimum=0,
        maximum=0.5,
        more="Read by the task summaries only: changing it reruns no evaluation.",
    )
    conformal_share: float = option(
        0.5,
        "share of each task's validation rows (stratified, whole groups) set apart from model "
        "selection and temperature scaling; conformal sets are calibrated on them (0 = no "
        "conformal sets, all validation rows select)",
        minimum=0,
        maximum=0.8,
        more="Leave-one-out tasks pool several validation sets and compute no conformal sets.",
    )

    def part(self, family: str, keys: tuple[str, ...] | None = None) -> dict:
        """What a family of jobs reads: ``mil`` (attention MIL, plus ``bootstrap``), ``probe``
        (the linear protocol the pretraining probe runs), ``robustness`` (the batch-leak probe
        and robustness index: linear, knn, bootstrap) or ``patch``: a patch-level protocol's
        ``keys`` (what it declares it reads, :attr:`cytofm.eval.protocols.Protocol.reads`;
        None: every setting but the tasks). Rules pass only these, so changing a setting reruns
        only the jobs that read it."""
        d = {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("tasks", "slide_tasks", "conformal_alpha")  # summaries read it
        }
        if family == "mil":
            return {"mil": d["mil"], "bootstrap": d["bootstrap"]}
        if family == "probe":  # the pretraining probe: the linear protocol only
            return {"linear": d["linear"], "select_metric": d["select_metric"]}
        if family == "robustness":  # batch-leak probe (linear) and robustness index (k)
            keys = ("linear", "knn", "select_metric", "bootstrap")
        elif family != "patch":
            raise ValueError(f"no family of evaluation jobs named {family!r}")
        if keys is None:
            return {k: v for k, v in d.items() if k != "mil"}
        return {k: d[k] for k in keys}
