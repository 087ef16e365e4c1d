"""Every output path of a run, defined once.

Each method returns a path under the results folder; called without arguments it returns the
Snakemake pattern with the wildcard in braces (``Paths("results").tiles()`` ->
``results/tiles/{slide}.zarr``), so rules and the run plan spell a path in one place.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Paths"]

SLIDE, DATASET, MODEL, BACKBONE = "{slide}", "{dataset}", "{model}", "{backbone}"
KIND, SOURCE, TASK, STASK, PROTOCOL = "{kind}", "{source}", "{task}", "{stask}", "{protocol}"


@dataclasses.dataclass(frozen=True)
class Paths:
    """Output layout under ``root`` (config key ``results``)."""

    root: str

    def _at(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # the demo
    def demo_slide(self, slide: str = SLIDE) -> str:
        return self._at("demo", "slides", f"{slide}.tif")

    def demo_slides_dir(self) -> str:
        return self._at("demo", "slides")

    def demo_truth(self, slide: str = SLIDE) -> str:
        return self._at("demo", "ground_truth", f"{slide}.tsv")

    def demo_sheet(self) -> str:
        return self._at("demo", "slides.tsv")

    def demo_crops(self) -> str:
        return self._at("demo", "crops", "labels.csv")

    def detection(self) -> str:
        return self._at("qc", "detection.json")

    def detection_overlays(self) -> str:
        """Folder of truth-vs-detection pictures, one per slide with a cell_truth table."""
        return self._at("qc", "detection")

    # slides and imported collections
    def store(self, kind: str = KIND, name: str = SOURCE) -> str:
        """A patch store: ``cells``/``tiles`` of a slide, or an imported ``datasets`` one."""
        return self._at(kind, f"{name}.zarr")

    def tiles(self, slide: str = SLIDE) -> str:
        return self.store("tiles", slide)

    def cells(self, slide: str = SLIDE) -> str:
        return self.store("cells", slide)

    def dataset(self, name: str = DATASET) -> str:
        return self.store("datasets", name)

    def qc(self, slide: str = SLIDE) -> str:
        return self._at("qc", f"{slide}.png")

    def cells_gallery(self, slide: str = SLIDE) -> str:
        return self._at("qc", f"{slide}.cells.png")

    def cells_summary(self, slide: str = SLIDE) -> str:
        return self._at("qc", f"{slide}.cells.json")

    # pretraining
    def pretrain_dir(self, model: str = MODEL) -> str:
        return self._at("pretrain", model)

    def pretrained(self, model: str = MODEL) -> str:
        """The exported backbone folder of a pretraining run."""
        return self._at("pretrain", model, "backbone")

    def probe(self, model: str = MODEL) -> str:
        return self._at("pretrain", model, "probe.json")

    def model_card(self, model: str = MODEL) -> str:
        """The backbone with its README.md model card: a folder to share or push to a hub."""
        return self._at("pretrain", model, "hub")

    # features and evaluation
    def backbone(self, backbone: str = BACKBONE) -> str:
        return self._at("backbones", backbone)

    def features(self, backbone: str = BACKBONE, kind: str = KIND, name: str = SOURCE) -> str:
        return self._at("features", backbone, kind, f"{name}.zarr")

    def features_shard(
        self, backbone: str = BACKBONE, kind: str = KIND, shard: str = "{shard}"
    ) -> str:
        """The manifest of one embedding job of slides: the feature stores it wrote."""
        return self._at("features", backbone, kind, "shards", f"{shard}.json")

    def result(self, task: str = TASK, backbone: str = BACKBONE, protocol: str = PROTOCOL) -> str:
        return self._at("eval", task, backbone, f"{protocol}.json")

    def predictions(
        self, task: str = TASK, backbone: str = BACKBONE, protocol: str = PROTOCOL
    ) -> str:
        return self._at("eval", task, backbone, f"{protocol}.predictions.npz")

    def abmil(self, stask: str = STASK, backbone: str = BACKBONE) -> str:
        return self.result(stask, backbone, "abmil")

    def abmil_dir(self, stask: str = STASK, backbone: str = BACKBONE) -> str:
        return self._at("eval", stask, backbone, "abmil")

    def summary(self, task: str = TASK) -> str:
        return self._at("eval", task, "summary.csv")

    def comparisons(self, task: str = TASK) -> str:
        return self._at("eval", task, "comparisons.csv")

    def hierarchy(self, task: str = TASK) -> str:
        return self._at("eval", task, "hierarchy.csv")

    def calibration(self, task: str = TASK) -> str:
        return self._at("eval", task, "calibration.csv")

    def robustness(self, task: str = TASK, backbone: str = BACKBONE) -> str:
        """A task's batch-leak probe and robustness index on one backbone."""
        return self._at("eval", task, backbone, "robustness.json")

    def task_figure(self, task: str, name: str) -> str:
        return self._at("eval", task, f"{name}.png")

    # predictions of slide tasks' final models
    def predict(self, stask: str = STASK, backbone: str = BACKBONE, slide: str = SLIDE) -> str:
        return self._at("predict", stask, backbone, f"{slide}.json")

    def predict_attention(
        self, stask: str = STASK, backbone: str = BACKBONE, slide: str = SLIDE
    ) -> str:
        return self._at("predict", stask, backbone, f"{slide}.attention.npz")

    def predict_heatmap(
        self, stask: str = STASK, backbone: str = BACKBONE, slide: str = SLIDE
    ) -> str:
        return self._at("predict", stask, backbone, f"{slide}.png")

    def cell_head(self, task: str = TASK, backbone: str = BACKBONE) -> str:
        """A cell task's final linear head on one backbone's features."""
        return self._at("eval", task, backbone, "linear_head")

    def predict_table(self, stask: str = STASK) -> str:
        return self._at("predict", stask, "predictions.csv")

    # exports for other tools
    def geojson(self, slide: str = SLIDE) -> str:
        return self._at("export", "geojson", f"{slide}.geojson")

    def features_h5(
        self, layout: str, backbone: str = BACKBONE, kind: str = KIND, name: str = SOURCE
    ) -> str:
        """``layout``: trident | stamp."""
        return self._at("export", layout, backbone, kind, f"{name}.h5")

    # report, logs, tracking
    def report(self, part: str = "index.html") -> str:
        return self._at("report", part)

    def log(self, rule: str, *parts: str) -> str:
        return (
            self._at("logs", rule, *parts[:-1], f"{parts[-1]}.log")
            if parts
            else self._at("logs", f"{rule}.log")
        )

    def mlflow_spool(self) -> str:
        return self._at("mlflow-spool")
