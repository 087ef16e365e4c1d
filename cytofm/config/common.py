"""What the config sections share: the built-in names their keys accept (precisions,
metrics, slide readers, backbone kinds, protocols) and the small checks several sections
make (names, slide readers, lists held as tuples)."""

from __future__ import annotations

from cytofm import registry
from cytofm.errors import ConfigError

__all__ = [
    "BACKBONE_KINDS_BUILTIN",
    "KINDS_WITHOUT_NETWORK",
    "METRICS",
    "PRECISIONS",
    "PROTOCOLS",
    "READERS",
]

PRECISIONS = ("auto", "fp32", "bf16")
READERS = (
    "auto | openslide | image (plain JPEG/PNG/BMP) | tiatoolbox | zstack (TIFF focal planes) | "
    "a reader a package adds"
)
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
BACKBONE_KINDS_BUILTIN = ("pretrained", "random", "timm", "hub", "morphometry")
# kinds without a network to fine-tune: protocols that train the backbone (LoRA) skip them
KINDS_WITHOUT_NETWORK = ("morphometry",)
PROTOCOLS = ("linear", "knn", "fewshot", "lora")  # built in; packages add more (eval.protocols)


def _tuples(obj, *keys: str) -> None:
    for key in keys:
        object.__setattr__(obj, key, tuple(getattr(obj, key)))


def _check_name(what: str, name: str) -> None:
    if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
        raise ConfigError(f"{what} name {name!r} may hold only letters, digits and '._-'")


def _check_reader(section: str, backend: str) -> None:
    """``auto``, a built-in reader, or one a package registers (checked by name: nothing is
    imported)."""
    if backend != "auto" and backend not in registry.READERS:
        raise ConfigError(
            f"{section}.backend: no slide reader named {backend!r}; available: auto, "
            f"{', '.join(registry.READERS.names())}. A package adds one with an entry point in "
            '[project.entry-points."cytofm.readers"]'
        )
