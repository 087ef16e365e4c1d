"""LoRA fine-tuning of a backbone with peft, trained from images (not cached features).

Low-rank adapters (rank, alpha, dropout and target modules from config; the default is rank 2
on the fused query/key/value projection of every attention block) are the only backbone weights
that train; a linear classification head trains with them. The learning rate is chosen on the
validation rows, as in the few-shot protocol this follows.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cytofm.eval.backbones import LoadedBackbone
from cytofm.eval.features import preprocess

__all__ = ["LoraClassifier", "LoraSettings", "predict_proba", "train_lora"]


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    target_modules: tuple = ("qkv",)
    batch_size: int = 32
    epochs: int = 20
    min_steps: int = 30
    max_steps: int = 300
    weight_decay: float = 0.01


class LoraClassifier(nn.Module):
    """peft-wrapped backbone (pooled features) + linear head."""

    def __init__(self, backbone: nn.Module, n_classes: int, s: LoraSettings):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=s.rank,
            lora_alpha=s.alpha,
            lora_dropout=s.dropout,
            target_modules=list(s.target_modules),
            bias="none",
        )
        self.backbone = get_peft_model(backbone, config)
        self.head = nn.Linear(backbone.num_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def merged(self) -> nn.Module:
        """A plain backbone+head with the adapters folded into the weights (a copy)."""
        clone = copy.deepcopy(self)
        return nn.Sequential(clone.backbone.merge_and_unload(), clone.head).eval()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips and 90-degree rotations: orientation carries no meaning in a cytology patch."""
    out = []
    for img in x:
        k = int(torch.randint(0, 4, (1,), generator=gen))
        img = torch.rot90(img, k, dims=(1, 2))
        if bool(torch.randint(0, 2, (1,), generator=gen)):
            img = torch.flip(img, dims=(2,))
        out.append(img)
    return torch.stack(out)


@torch.no_grad()
def predict_proba(model: nn.Module, bb: LoadedBackbone, images, device, batch: int = 256):
    model.eval()
    out = []
    for start in range(0, len(images), batch):
        x = preprocess(np.asarray(images[start : start + batch]), bb, device)
        out.append(F.softmax(model(x).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features))


def n_steps(n_train: int, s: LoraSettings) -> int:
    per_epoch = math.ceil(n_train / min(s.batch_size, n_train))
    return int(min(max(s.epochs * per_epoch, s.min_steps), s.max_steps))


def train_lora(
    bb: LoadedBackbone,
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    s: LoraSettings,
    lr: float,
    seed: int,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> LoraClassifier:
    """Train adapters + head on ``images`` (uint8 N,H,W,3); deterministic on CPU given seed."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = LoraClassifier(copy.deepcopy(bb.model), n_classes, s).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=s.weight_decay)
    steps = n_steps(len(labels), s)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    batch = min(s.batch_size, len(labels))
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    order = torch.randperm(len(labels), generator=gen)
    pos = 0
    model.train()
    for _ in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(labels), generator=gen), 0
        idx = order[pos : pos + batch].sort().values
        pos += batch
        x = _augment(preprocess(images[idx.numpy()], bb, device), gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = F.cross_entropy(model(x).float(), y_all[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()
