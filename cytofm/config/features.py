"""The config sections of features: the backbones to compare (``backbones``, one
:class:`BackboneSpec` each) and feature caching (``embed``)."""

from __future__ import annotations

import dataclasses

from cytofm import registry
from cytofm.config.common import BACKBONE_KINDS_BUILTIN, PRECISIONS, _check_name, _tuples
from cytofm.config.fields import Section, option
from cytofm.errors import ConfigError

__all__ = [
    "BackboneSpec",
    "EmbedConfig",
]


@dataclasses.dataclass(frozen=True)
class BackboneSpec(Section):
    """a feature extractor to compare (results/features/<name>/)"""

    name: str = option(doc="the entry's key")
    kind: str = option(
        doc="pretrained (this config's pretrain output) | random | timm | hub | morphometry | a "
        "kind a package adds",
        more="`random` takes `like: <pretrained backbone>` (or `arch`); `timm` needs `arch` and "
        "a local `weights` file; `hub` needs `arch: hf-hub:org/name` (timm downloads it when "
        "online); `morphometry` needs nothing: hand-made nucleus and cell measurements, the "
        "control without learning (docs/evaluation.md). See docs/development.md for kinds from "
        "other packages.",
    )
    like: str = option(
        "", "random: copy architecture and preprocessing of this pretrained backbone"
    )
    arch: str = option("", "random/timm/hub: timm architecture name or hf-hub:org/name")
    weights: str = option(
        "", "timm: local weights file (.safetensors, or .pth/.bin loaded weights_only)"
    )
    model_args: dict = option({}, "keyword arguments for timm")
    input_size: int = option(0, "patches are resized to this (0 = model default)", minimum=0)
    mean: tuple | None = option(None, "normalisation mean (omit = the model's own)", length=3)
    std: tuple | None = option(None, "normalisation std (omit = the model's own)", length=3)
    seed: int = option(0, "random: initialisation seed")
    enabled: bool = option(
        True, "false: leave this backbone out (one that config.yaml ships, in your overlay)"
    )

    def check(self) -> None:
        s = f"backbones.{self.name}"
        _check_name("backbone", self.name)
        if self.kind not in BACKBONE_KINDS_BUILTIN:
            if self.kind not in registry.BACKBONE_KINDS:
                raise ConfigError(
                    f"{s}.kind must be one of {list(BACKBONE_KINDS_BUILTIN)} or a kind an "
                    "installed package adds "
                    f"({registry.BACKBONE_KINDS.names() or 'none installed'}), "
                    f"got {self.kind!r}"
                )
        if self.kind == "timm" and not (self.arch and self.weights):
            raise ConfigError(f"{s}: kind 'timm' needs 'arch' and a local 'weights' file")
        if self.kind == "hub" and not self.arch:
            raise ConfigError(
                f"{s}: kind 'hub' needs 'arch', e.g. hf-hub:timm/vit_small_patch16_224"
            )
        if self.kind == "random" and not (self.like or self.arch):
            raise ConfigError(f"{s}: kind 'random' needs 'like' (a pretrained backbone) or 'arch'")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None:
                if len(v) != 3:
                    raise ConfigError(f"{s}.{key} must hold 3 numbers (RGB), got {v!r}")
                object.__setattr__(self, key, tuple(float(x) for x in v))
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(
                f"{s}.std must be positive (images are divided by it), got {list(self.std)}"
            )


@dataclasses.dataclass(frozen=True)
class EmbedConfig(Section):
    """feature caching (results/features/<backbone>/<kind>/<store>.zarr, float16)"""

    sources: tuple = option(
        ("datasets", "cells"),
        "stores that get features: datasets (imported), cells, tiles",
        items="string",
        choices=("datasets", "cells", "tiles"),
    )
    batch_size: int = option(256, "images per forward pass", minimum=1)
    precision: str = option(
        "auto", "auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32", choices=PRECISIONS
    )
    device: str = option("auto", "auto | cpu | cuda | cuda:1 ...")
    num_workers: int | str = option(
        "auto",
        "DataLoader processes that read and decode batches: auto = cores - 1 (max 4) on GPU, "
        "0 on CPU",
        output=False,
        more="Features are written chunk by chunk from a background thread meanwhile; the "
        "log and MLflow report images/s. The features do not depend on it.",
    )
    slides_per_job: int = option(
        64,
        "slides whose cells (or tiles) one embedding job embeds, with the backbone loaded once",
        minimum=1,
        output=False,
        more="Slides go to jobs in the sample sheet's order, 64 to a job: results/features/"
        "<backbone>/<kind>/shards/<n>.json lists a job's feature stores. A cohort of 10,000 "
        "slides then plans 157 embedding jobs per backbone, not 10,000 "
        "(benchmarks/results/dag_benchmark.md). Add new slides at the end of the sheet: only the "
        "last job's slides are embedded again. Changing it embeds every slide again (to the same "
        "features) and reruns what reads them.",
    )

    def check(self) -> None:
        if self.num_workers != "auto" and not (
            isinstance(self.num_workers, int) and self.num_workers >= 0
        ):
            raise ConfigError(
                f"embed.num_workers must be 'auto' or an integer >= 0, got {self.num_workers!r}"
            )
        _tuples(self, "sources")
