"""Feature extractors named in config, all built with timm, and their preprocessing.

Kinds:

``pretrained``
    A backbone exported by this pipeline's pretraining (``results/pretrain/<model>/backbone``).
``random``
    The same architecture and preprocessing as a pretrained backbone (``like``), or any timm
    architecture (``arch``), with timm's random initialisation: the control every pretrained
    number should be read against.
``timm``
    Any timm architecture with a local weights file (``.safetensors``, or ``.pth``/``.bin``
    loaded with ``torch.load(weights_only=True)``), e.g. a UNI, CLIP or ViT checkpoint.
``hub``
    A timm/Hugging Face hub name (``hf-hub:org/name``) fetched by timm when online, or from the
    local Hugging Face cache with ``HF_HUB_OFFLINE=1``.
``morphometry``
    No network: nucleus and cell measurements per patch (:mod:`cytofm.eval.morphometry`), at
    the patches' own size and um/px; the control without learning.
any other name
    A kind another package installs with an entry point in the group ``cytofm.backbones``: a
    factory ``factory(spec) -> torch.nn.Module`` mapping (N, 3, H, W) normalised images to
    (N, D) features, with ``num_features = D`` as timm models have. ``input_size``, ``mean``
    and ``std`` come from the spec or the model's ``pretrained_cfg``; ``weights`` (if set) is
    hashed into its identity and becomes an input of the jobs that use it.

Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cytofm.config import BackboneSpec  # the config entry, defined with the config
from cytofm.config.sections import BACKBONE_KINDS_BUILTIN
from cytofm.errors import ConfigError, InputDataError
from cytofm.provenance import file_sha256
from cytofm.registry import BACKBONE_KINDS

__all__ = ["BackboneSpec", "LoadedBackbone", "load_backbone_spec", "state_sha256"]

log = logging.getLogger(__name__)

KINDS = BACKBONE_KINDS_BUILTIN
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class LoadedBackbone:
    model: nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    identity: dict[str, Any]  # name, kind, architecture, weights checksum
    mpp: float | None = None  # um/px of the patches the weights were trained on, when known

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "mpp": self.mpp,
        }


def state_sha256(model: nn.Module) -> str:
    """SHA-256 over parameter names and bytes: identifies weights without a file."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _preproc(model: nn.Module, spec: BackboneSpec) -> tuple[int, tuple, tuple]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = spec.input_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    mean = spec.mean or tuple(cfg.get("mean", IMAGENET_MEAN))
    std = spec.std or tuple(cfg.get("std", IMAGENET_STD))
    return size, tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with code, truncated files, not a checkpoint
        raise InputDataError(
            f"cannot load weights {path}: {exc.__class__.__name__}: {exc}. Only plain tensor "
            "checkpoints load (torch.load weights_only=True) or .safetensors; convert the file "
            "with safetensors if it holds other objects"
        ) from exc
    for key in ("state_dict", "model", "teacher"):  # common wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputDataError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _adapt_checkpoint(state: dict, model: nn.Module) -> dict:
    """Apply the architecture's own timm checkpoint filter when it has one.

    timm converts foreign layouts there (OpenAI CLIP, original ViT/JAX exports) and resamples
    position embeddings to the model's image size; a timm-format state dict passes unchanged.
    """
    import sys

    module = sys.modules.get(type(model).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return convert(state, model)
    except Exception as exc:  # not a layout this filter knows: the strict check below decides
        log.debug("checkpoint filter of %s not applied: %s", type(model).__name__, exc)
        return state


def load_backbone_spec(
    spec: BackboneSpec, pretrained_dir: str | Path | None = None, device: str = "cpu"
) -> LoadedBackbone:
    """Build the model of ``spec`` in eval mode with its preprocessing and identity.

    ``pretrained_dir`` is the exported backbone folder for kind ``pretrained``, and for
    ``random`` with ``like``.
    """
    import timm

    from cytofm.ssl.export import load_backbone, read_backbone_config

    identity: dict[str, Any] = {"name": spec.name, "kind": spec.kind}
    mpp = None
    if spec.kind == "pretrained" or (spec.kind == "random" and spec.like):
        if pretrained_dir is None or not (Path(pretrained_dir) / "config.json").is_file():
            raise InputDataError(
                f"backbone '{spec.name}': exported backbone folder {pretrained_dir} has no "
                "config.json; run the pretrain rule first"
            )
        cfg = read_backbone_config(pretrained_dir)
        pc = cfg["pretrained_cfg"]
        size, mean, std = int(pc["input_size"][-1]), tuple(pc["mean"]), tuple(pc["std"])
        mpp = (cfg.get("patch_geometry") or {}).get("mpp")
        identity["architecture"] = cfg["architecture"]
        if spec.kind == "pretrained":
            model = load_backbone(pretrained_dir, device)
            identity["weights_sha256"] = file_sha256(Path(pretrained_dir) / "model.safetensors")
            identity["source"] = str(pretrained_dir)
        else:
            torch.manual_seed(spec.seed)
            model = timm.create_model(
                cfg["architecture"], pretrained=False, num_classes=0, **cfg["model_args"]
            )
            identity["like"] = spec.like
        size = spec.input_size or size
        mean, std = spec.mean or mean, spec.std or std
    elif spec.kind == "random":
        torch.manual_seed(spec.seed)
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0, **spec.model_args)
        identity["architecture"] = spec.arch
        size, mean, std = _preproc(model, spec)
    elif spec.kind == "timm":
        path = Path(spec.weights)
        if not path.is_file():
            raise InputDataError(
                f"backbone '{spec.name}': weights file {path} not found; set backbones."
                f"{spec.name}.weights to a local .safetensors/.pth/.bin file"
            )
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0, **spec.model_args)
        state = _adapt_checkpoint(_load_weights_file(path), model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # heads of classification checkpoints are expected leftovers; nothing else is
        unexpected = [k for k in unexpected if not k.startswith(("head.", "fc.", "classifier."))]
        if missing or unexpected:
            raise InputDataError(
                f"backbone '{spec.name}': {path} does not fit timm '{spec.arch}' "
                f"{spec.model_args}: missing {missing[:5]}, unexpected {unexpected[:5]} "
                f"({len(missing)} / {len(unexpected)} keys). Check arch and model_args"
            )
        identity["architecture"] = spec.arch
        identity["weights_sha256"] = file_sha256(path)
        identity["source"] = path.name
        size, mean, std = _preproc(model, spec)
    elif spec.kind == "morphometry":
        from cytofm.eval.morphometry import Morphometry, identity_sha256

        model = Morphometry()
        identity["architecture"] = "morphometry"
        identity["weights_sha256"] = identity_sha256()
        # the patches as they are: no resizing (input size 0), RGB in [0, 1]
        size, mean, std = spec.input_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif spec.kind == "hub":
        model = timm.create_model(spec.arch, pretrained=True, num_classes=0, **spec.model_args)
        identity["architecture"] = spec.arch
        size, mean, std = _preproc(model, spec)
    else:  # a kind another package registers
        torch.manual_seed(spec.seed)
        model = BACKBONE_KINDS[spec.kind](spec)
        if not isinstance(getattr(model, "num_features", None), int):
            raise ConfigError(
                f"backbones.{spec.name}: the '{spec.kind}' factory returned a model without an "
                "integer num_features (its feature width, as timm models have); set it"
            )
        identity["architecture"] = spec.arch or spec.kind
        if spec.weights:
            identity["weights_sha256"] = file_sha256(spec.weights)
            identity["source"] = Path(spec.weights).name
        size, mean, std = _preproc(model, spec)
    if "weights_sha256" not in identity:
        identity["weights_sha256"] = state_sha256(model)
    identity["n_params"] = int(sum(p.numel() for p in model.parameters()))
    model = model.to(device).eval()
    return LoadedBackbone(model, int(size), tuple(mean), tuple(std), identity, mpp)
