"""Patch-level evaluation protocols, registered by name (``evaluate.tasks.<task>.protocols``).

A protocol turns a task (labels, the shared train/val/test split) and a backbone (its cached
features, or the backbone itself) into test-set class probabilities. It may run once on the
whole training split (seed-independent, e.g. ``linear``, ``knn``) and/or once per seed for each
label budget it declares: ``("shots", k)`` examples per class or ``("fraction", f)`` of the
training split, sampled by :mod:`cytofm.eval.splits` so every protocol sees the same rows for
the same seed. The ``evaluate`` stage does the rest (sampling, summaries with CIs, the result
JSON), the same for every protocol.

cytofm registers ``linear``, ``knn``, ``fewshot`` and ``lora``. Another package adds one with an
entry point in the group ``cytofm.protocols`` naming a :class:`Protocol` subclass (see
:mod:`cytofm.registry`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cytofm.config import EvalConfig, TaskConfig
from cytofm.eval.splits import Split
from cytofm.registry import PROTOCOLS

__all__ = [
    "HARNESS_READS",
    "PROTOCOLS",
    "DeclaredSettings",
    "EvalInputs",
    "Protocol",
    "register_protocol",
    "settings_read",
]

Budget = tuple[str, Any]  # ("shots", k) or ("fraction", f)
# what the harness reads for every protocol: the confidence intervals and the calibration rows
HARNESS_READS = ("bootstrap", "conformal_share")


@dataclasses.dataclass
class EvalInputs:
    """What a protocol works from. ``features`` is None for protocols that do not read them."""

    task: TaskConfig
    cfg: EvalConfig
    spec: Any  # BackboneSpec
    labels: np.ndarray
    classes: list[str]
    split: Split
    store: Any  # the dataset's zarr group (images for protocols that train the backbone)
    features: np.ndarray | None = None
    pretrained_dir: str | Path | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def linear(self, rows: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Logistic regression on the features of ``rows``, C chosen on val; test
        probabilities and what was chosen."""
        from cytofm.eval.linear import fit_linear, full_proba

        feats, labels, va = self.features, self.labels, self.split.val
        clf, C, val_scores = fit_linear(
            feats[rows],
            labels[rows],
            feats[va],
            labels[va],
            Cs=list(self.cfg.linear.Cs),
            class_names=self.classes,
            metric=self.cfg.select_metric,
            max_iter=self.cfg.linear.max_iter,
        )
        return full_proba(clf, feats[self.split.test], self.n_classes), {
            "C": C,
            "val": _fmt(val_scores),
            "val_proba": self._proba(lambda rows: full_proba(clf, feats[rows], self.n_classes)),
            "calib_proba": self._proba(
                lambda rows: full_proba(clf, feats[rows], self.n_classes), self.split.calib
            ),
        }

    def _proba(self, predict, rows: np.ndarray | None = None) -> np.ndarray:
        """``predict(rows)`` on the validation rows (or ``rows``), an empty array if none."""
        rows = self.split.val if rows is None else rows
        return predict(rows) if len(rows) else np.zeros((0, self.n_classes))


class Protocol:
    """Base of every protocol; subclasses override what they do."""

    name: ClassVar[str] = ""
    # the ``evaluate`` settings it reads (keys of EvalConfig, besides HARNESS_READS, which every
    # job reads); its jobs get only these, so changing another protocol's setting reruns none of
    # its jobs. None: every setting (a protocol that does not say).
    reads: ClassVar[tuple[str, ...] | None] = None
    needs_features: ClassVar[bool] = True  # reads the backbone's cached features
    uses_gpu: ClassVar[bool] = False  # its jobs ask for a GPU where there is one

    def __init__(self, inputs: EvalInputs):
        self.inputs = inputs

    def once(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        """A seed-independent run on the whole training split, or None."""
        return None

    @classmethod
    def budgets(cls, task: TaskConfig, cfg: EvalConfig) -> list[Budget]:
        """The label budgets run once per seed of the task."""
        return []

    def prepare(self) -> None:
        """Called once before the first budgeted run (load a model, read images)."""

    def run(self, rows: np.ndarray, seed: int, budget: Budget) -> tuple[np.ndarray, dict]:
        """Test probabilities after training on ``rows`` with ``seed``, and what was chosen;
        ``chosen["val_proba"]``, where given, holds the validation rows' probabilities of the
        model kept (temperature scaling is fitted on them) and ``chosen["calib_proba"]`` those
        of the split's calibration rows (conformal sets are calibrated on them)."""
        raise NotImplementedError(f"protocol {self.name!r} declares budgets but has no run()")

    def block_extra(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Extra keys for a budget's result block, from its runs."""
        return {}


def register_protocol(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    return PROTOCOLS.register(cls.name)(cls)


class DeclaredSettings:
    """``cfg`` as a job of ``protocol`` sees it: the settings its protocol declares in
    :attr:`Protocol.reads` (and the harness's). Its jobs are given only those (the rest are
    defaults), so reading another one is refused, naming the fix, rather than silently
    reading a default."""

    def __init__(self, cfg: EvalConfig, protocol: str):
        reads = PROTOCOLS[protocol].reads
        self._cfg, self._protocol = cfg, protocol
        self._keys = None if reads is None else {*HARNESS_READS, *reads}
        self._fields = {f.name for f in dataclasses.fields(cfg)}

    def __getattr__(self, key: str) -> Any:
        if self._keys is not None and key in self._fields and key not in self._keys:
            raise AttributeError(
                f"protocol {self._protocol!r} reads evaluate.{key}, which its `reads` "
                f"{tuple(sorted(self._keys - set(HARNESS_READS)))} does not declare; add it "
                "there (a job gets only the settings its protocol declares)"
            )
        return getattr(self._cfg, key)


def settings_read(protocol: str, cfg: EvalConfig) -> dict[str, Any]:
    """The ``evaluate`` settings a job of ``protocol`` reads (what its rule passes)."""
    reads = PROTOCOLS[protocol].reads
    keys = None if reads is None else (*HARNESS_READS, *reads)
    return cfg.part("patch", keys)


def _fmt(scores: dict) -> dict[str, float]:
    return {str(k): float(v) for k, v in scores.items()}


class Linear(Protocol):
    """Logistic regression on the features (C chosen on val), on the whole training split and
    on the task's ``fractions`` of it."""

    name = "linear"
    reads = ("linear", "select_metric")

    def once(self):
        return self.inputs.linear(self.inputs.split.train)

    @classmethod
    def budgets(cls, task, cfg):
        return [("fraction", float(f)) for f in task.fractions]

    def run(self, rows, seed, budget):
        return self.inputs.linear(rows)


class Knn(Protocol):
    """Cosine k-nearest neighbours on the features, whole training split; each neighbour votes
    with weight ``exp(similarity / temperature)`` (DINO's and eva's kNN)."""

    name = "knn"
    reads = ("knn",)

    def once(self):
        from cytofm.eval.linear import knn_proba

        inp = self.inputs
        tr, knn = inp.split.train, inp.cfg.knn

        def predict(rows):
            return knn_proba(
                inp.features[tr], inp.labels[tr], inp.features[rows], knn.k, inp.n_classes,
                temperature=knn.temperature,
            )  # fmt: skip

        return predict(inp.split.test), {
            "k": min(knn.k, len(tr)),
            "temperature": knn.temperature,
            "val_proba": inp._proba(predict),
            "calib_proba": inp._proba(predict, inp.split.calib),
        }


class FewShot(Protocol):
    """The linear probe on k examples per class, per seed."""

    name = "fewshot"
    reads = ("linear", "select_metric")

    @classmethod
    def budgets(cls, task, cfg):
        return [("shots", int(k)) for k in task.shots]

    def run(self, rows, seed, budget):
        return self.inputs.linear(rows)


class Lora(Protocol):
    """LoRA fine-tuning of the backbone from the task's images (the protocol of Dausort,
    Godelaine et al.): one adapter per learning rate of the grid for the protocol's steps, best
    on val."""

    name = "lora"
    reads = ("lora", "select_metric")
    needs_features = False
    uses_gpu = True

    @classmethod
    def budgets(cls, task, cfg):
        shots = [("shots", int(k)) for k in (task.lora_shots or task.shots)]
        return shots + [("fraction", float(f)) for f in cfg.lora.fractions]

    def prepare(self):
        """Backbone and the images LoRA needs: val and test rows read once, training rows per
        run (a few-shot job never holds the whole collection in memory)."""
        from cytofm.eval.backbones import load_backbone_spec
        from cytofm.eval.features import pick_device

        inp = self.inputs
        self.device = pick_device(inp.cfg.lora.device)
        self.bb = load_backbone_spec(inp.spec, inp.pretrained_dir, device=str(self.device))
        self.images = inp.store["images"]
        self.val_images = _rows(self.images, inp.split.val)
        self.calib_images = _rows(self.images, inp.split.calib)
        self.test_images = _rows(self.images, inp.split.test)
        self.settings = inp.cfg.lora

    def run(self, rows, seed, budget):
        from cytofm.eval.linear import select_score
        from cytofm.eval.lora import budget as steps_for
        from cytofm.eval.lora import predict_proba, train_lora

        inp, (kind, amount) = self.inputs, budget
        labels, val = inp.labels, inp.split.val
        train_images = _rows(self.images, rows)
        shots = amount if kind == "shots" else None
        plan = steps_for(self.settings, shots=shots, n_train=len(rows))
        best, val_scores, best_val = None, {}, None
        for lr in inp.cfg.lora.lrs:
            model = train_lora(
                self.bb,
                train_images,
                labels[rows],
                inp.n_classes,
                self.settings,
                float(lr),
                seed,
                steps=plan["steps"],
                warmup_steps=plan["warmup_steps"],
                device=self.device,
                precision=inp.cfg.lora.precision,
            )
            pv = np.zeros((0, inp.n_classes))
            if len(val):
                pv = predict_proba(model, self.bb, self.val_images, self.device)
                val_scores[lr] = select_score(labels[val], pv, inp.cfg.select_metric, inp.classes)
            else:
                val_scores[lr] = 0.0
            if best is None or val_scores[lr] > val_scores[best[0]]:
                best, best_val = (float(lr), model), pv
        p = predict_proba(best[1], self.bb, self.test_images, self.device)
        calib = inp._proba(
            lambda _: predict_proba(best[1], self.bb, self.calib_images, self.device),
            inp.split.calib,
        )
        return p, {
            "lr": best[0],
            "val": _fmt(val_scores),
            "budget": plan,
            "val_proba": best_val,
            "calib_proba": calib,
        }

    def block_extra(self, runs):
        """Steps run against the protocol's (max over seeds)."""
        return {"budget": max((r["budget"] for r in runs), key=lambda b: b["protocol_steps"])}


def _rows(array, rows: np.ndarray) -> np.ndarray:
    """Rows of a zarr array (sorted indices), read chunk-wise."""
    if len(rows) == 0:
        return np.zeros((0, *array.shape[1:]), array.dtype)
    return np.asarray(array.get_orthogonal_selection((np.asarray(rows),)))
