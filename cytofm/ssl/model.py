"""ViT backbone from timm with iBOT's mask token, plus the student/teacher wrappers."""

from __future__ import annotations

import timm
import torch
from torch import nn

from cytofm.ssl.heads import DINOHead

__all__ = ["ARCH_PRESETS", "MaskableViT", "MultiCropStudent", "build_backbone", "resolve_arch"]

# Named architectures beyond timm's own: name -> (timm architecture, its keyword arguments).
# A config picks one with a single scalar (`pretrain.model.arch`), so an overlay that names another
# architecture replaces it whole; Snakemake merges nested mappings key by key, so an overlay's
# `model_args: {}` could never undo the demo's sizes.
ARCH_PRESETS: dict[str, tuple[str, dict]] = {
    # the demo's laptop-sized ViT: 4 blocks of width 128 (use with patch_size 8 on 64-px patches)
    "cytofm_vit_demo": ("vit_small_patch16_224", {"embed_dim": 128, "depth": 4, "num_heads": 4}),
}


def resolve_arch(arch: str, model_args: dict | None = None) -> tuple[str, dict]:
    """The timm architecture and keyword arguments a name stands for: a cytofm preset's, with
    ``model_args`` on top, or a timm name with ``model_args`` as given."""
    base, preset = ARCH_PRESETS.get(arch, (arch, {}))
    return base, {**preset, **(model_args or {})}


def build_backbone(
    arch: str,
    img_size: int,
    patch_size: int,
    model_args: dict | None = None,
    drop_path: float = 0.0,
) -> nn.Module:
    """A timm ViT without classifier (``num_classes=0``) that accepts any crop size; ``arch`` is
    a timm name or a cytofm preset (:data:`ARCH_PRESETS`)."""
    arch, model_args = resolve_arch(arch, model_args)
    return timm.create_model(
        arch,
        pretrained=False,
        num_classes=0,
        img_size=img_size,
        patch_size=patch_size,
        dynamic_img_size=True,
        drop_path_rate=drop_path,
        **(model_args or {}),
    )


class MaskableViT(nn.Module):
    """A timm ``VisionTransformer`` whose patch tokens can be replaced by a learnt mask token.

    Only ``self.vit`` is exported; the mask token exists for pretraining alone.
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.embed_dim = vit.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, vit.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) images, optional (B, N) bool masks -> [CLS] (B, D), patches (B, N, D)."""
        v = self.vit
        tokens = v.patch_embed(x)  # (B, h, w, D) with dynamic_img_size
        if masks is not None:
            b, h, w, _ = tokens.shape
            m = masks.view(b, h, w, 1)
            tokens = torch.where(m, self.mask_token.to(tokens.dtype), tokens)
        tokens = v._pos_embed(tokens)  # (B, P + N, D)
        tokens = v.patch_drop(tokens)
        tokens = v.norm_pre(tokens)
        tokens = v.blocks(tokens)
        tokens = v.norm(tokens)
        return tokens[:, 0], tokens[:, v.num_prefix_tokens :]


class MultiCropStudent(nn.Module):
    """Backbone + [CLS] head + patch head, run over global (masked) and local crops.

    One module so DDP sees a single forward per step.
    """

    def __init__(self, backbone: MaskableViT, cls_head: DINOHead, patch_head: DINOHead | None):
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head
        self.patch_head = patch_head  # None: the [CLS] head is shared with patch tokens

    def heads(self, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.patch_head if self.patch_head is not None else self.cls_head
        return self.cls_head(cls), head(patches)

    def forward(
        self,
        global_crops: torch.Tensor,  # (G*B, 3, Hg, Wg)
        local_crops: torch.Tensor | None,  # (L*B, 3, Hl, Wl)
        masks: torch.Tensor | None,  # (G*B, N)
    ) -> dict[str, torch.Tensor]:
        cls, patches = self.backbone(global_crops, masks)
        cls_logits, patch_logits = self.heads(cls, patches)
        out = {"global_cls": cls_logits, "global_patch": patch_logits, "global_emb": cls}
        if local_crops is not None and len(local_crops):
            lcls, _ = self.backbone(local_crops)
            out["local_cls"] = self.cls_head(lcls)
        return out
