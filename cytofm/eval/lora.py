"""LoRA fine-tuning of a backbone with peft, trained from images (not cached features).

The protocol is the one of the cytology LoRA study cytofm follows (Dausort et al. 2024, built on
CLIP-LoRA): timm's fused ``qkv`` is split into separate query, key and value projections
(:mod:`cytofm.eval.qkv`) and a rank-2 adapter (alpha 1, dropout 0.25, the update scaled by
alpha / sqrt(rank) as CLIP-LoRA's code scales it: peft's ``use_rslora``) goes on the query and
on the value projection of every block; keys, output projection and MLPs stay frozen. A linear head
trains with the adapters (AdamW, weight decay 0.01, batch 32). A k-shot run takes
``warmup + iters_per_shot * k`` steps (50 + 100 k: 150 steps at 1 shot, 5,050 at 50) with a
linear warm-up and a cosine decay to ``min_lr``; a run on a share of the training split takes
``warmup + epochs * batches_per_epoch``. The learning rate is chosen on the validation rows from
a five-value grid. A config may cap the steps (``max_steps``) for a CPU demo: the run then keeps
the schedule's shape, and :func:`budget` reports the steps taken against the protocol's; a
shorter learning-rate grid, another rank or other adapted layers are reported the same way.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cytofm.config import LoraConfig
from cytofm.eval.backbones import LoadedBackbone
from cytofm.eval.features import preprocess
from cytofm.eval.qkv import split_qkv

__all__ = [
    "PROTOCOL",
    "LoraClassifier",
    "budget",
    "departures",
    "lr_factor",
    "predict_proba",
    "protocol_steps",
    "target_pattern",
    "train_lora",
]


_SCOPES = {"q": "attn", "k": "attn", "v": "attn", "proj": "attn", "fc1": "mlp", "fc2": "mlp"}


def target_pattern(names) -> str:
    """peft's ``target_modules`` as one regular expression: attention and MLP layer names are
    scoped to their block part (``proj`` alone would also match the patch embedding's
    convolution), any other name matches a module of that name anywhere."""
    parts = []
    for name in names:
        scope = _SCOPES.get(name)
        parts.append(rf".*\.{scope}\.{name}" if scope else rf"(?:.*\.)?{re.escape(name)}")
    return "^(?:" + "|".join(parts) + ")$"


class LoraClassifier(nn.Module):
    """peft-wrapped backbone (pooled features) + linear head."""

    def __init__(self, backbone: nn.Module, n_classes: int, s: LoraConfig):
        super().__init__()
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        split_qkv(backbone)
        config = PeftLoraConfig(
            r=s.rank,
            lora_alpha=s.alpha,
            lora_dropout=s.dropout,
            target_modules=target_pattern(s.target_modules),
            bias="none",
            use_rslora=s.rslora,
        )
        self.backbone = get_peft_model(backbone, config)
        self.head = nn.Linear(backbone.num_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def adapted_modules(self) -> list[str]:
        """Names (in the plain backbone) of the layers that carry an adapter."""
        from peft.tuners.lora import LoraLayer

        prefix = "base_model.model."
        return [
            n.removeprefix(prefix)
            for n, m in self.backbone.named_modules()
            if isinstance(m, LoraLayer)
        ]

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


def protocol_steps(s: LoraConfig, *, shots: int | None = None, n_train: int = 0) -> int:
    """Optimisation steps the protocol prescribes: warm-up plus ``iters_per_shot`` per shot for
    a k-shot run, plus ``fraction_epochs`` passes over the rows for a run on a data share."""
    if shots is not None:
        return s.warmup_steps + s.iters_per_shot * int(shots)
    per_epoch = math.ceil(n_train / min(s.batch_size, max(n_train, 1)))
    return s.warmup_steps + s.fraction_epochs * per_epoch


# The protocol of Dausort, Godelaine et al. (CLIP-LoRA's settings): what a run is measured
# against. A config that departs from it runs a reduced budget, and results say so.
PROTOCOL = {
    "lrs": 5,  # learning rates tried, best on val
    "rank": 2,
    "target_modules": ("q", "v"),
}


def departures(s: LoraConfig) -> list[str]:
    """How the settings fall short of the protocol's search and adapters (besides steps)."""
    out = []
    if len(s.lrs) < PROTOCOL["lrs"]:
        out.append(f"{len(s.lrs)} of {PROTOCOL['lrs']} learning rates")
    if s.rank != PROTOCOL["rank"]:
        out.append(f"rank {s.rank}, not {PROTOCOL['rank']}")
    if tuple(s.target_modules) != PROTOCOL["target_modules"]:
        modules = "+".join(s.target_modules)
        out.append(f"adapters on {modules}, not {'+'.join(PROTOCOL['target_modules'])}")
    return out


def budget(s: LoraConfig, *, shots: int | None = None, n_train: int = 0) -> dict:
    """Steps run against the protocol's, and ``reduced`` (with the reasons in ``departures``)
    when a ``max_steps`` cap cuts them or the learning-rate grid, rank or adapted layers
    differ from the protocol's."""
    full = protocol_steps(s, shots=shots, n_train=n_train)
    steps = min(full, s.max_steps) if s.max_steps > 0 else full
    warmup = round(s.warmup_steps * steps / full)
    why = ([f"{steps} of {full} steps"] if steps < full else []) + departures(s)
    return {
        "steps": int(steps),
        "warmup_steps": int(warmup),
        "protocol_steps": int(full),
        "protocol_warmup_steps": int(s.warmup_steps),
        "reduced": bool(why),
        "departures": why,
    }


def lr_factor(step: int, steps: int, warmup: int, lr: float, min_lr: float) -> float:
    """Multiplier of the peak rate at ``step``: linear warm-up over ``warmup`` steps, then a
    cosine from 1 to ``min_lr / lr`` over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(steps - warmup, 1)
    floor = min(min_lr / lr, 1.0)
    t = min(step - warmup, span) / span
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def train_lora(
    bb: LoadedBackbone,
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    s: LoraConfig,
    lr: float,
    seed: int,
    *,
    steps: int,
    warmup_steps: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> LoraClassifier:
    """Train adapters + head on ``images`` (uint8 N,H,W,3) for ``steps`` steps; deterministic
    on CPU given seed."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = LoraClassifier(copy.deepcopy(bb.model), n_classes, s).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: lr_factor(t, steps, warmup_steps, lr, s.min_lr)
    )
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
