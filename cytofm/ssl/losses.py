"""iBOT objectives: [CLS] self-distillation across views, masked-patch self-distillation, KoLeo.

Teacher outputs are centred (an exponential moving average of their mean) and sharpened (a low
temperature); the student is trained to match them with a cross-entropy. Centre updates are
averaged over processes under DDP so every rank uses the same centre.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if _distributed():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if _distributed():
        x = x.clone()
        dist.all_reduce(x)
    return x


class DINOLoss(nn.Module):
    """Cross-view [CLS] distillation: each student view predicts every *other* teacher view.

    Teacher views are the global crops; student views are global + local crops.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
        """(V_t*B, K) logits -> centred, sharpened probabilities."""
        return F.softmax((teacher_logits - self.center) / temp, dim=-1)

    def forward(
        self,
        student_logits: list[torch.Tensor],  # V_s tensors of (B, K)
        teacher_probs: list[torch.Tensor],  # V_t tensors of (B, K), V_t <= V_s
    ) -> torch.Tensor:
        total, n_terms = 0.0, 0
        for t_idx, q in enumerate(teacher_probs):
            for s_idx, s in enumerate(student_logits):
                if s_idx == t_idx:  # same global view: skipped
                    continue
                loss = torch.sum(-q * F.log_softmax(s / self.student_temp, dim=-1), dim=-1)
                total = total + loss.mean()
                n_terms += 1
        return total / max(n_terms, 1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        batch_center = _all_reduce_mean(teacher_logits.float().mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


class IBOTPatchLoss(nn.Module):
    """Masked-patch distillation: at masked positions the student (which saw mask tokens)
    predicts the teacher's output for the unmasked patch. Each image's masked patches are
    averaged first, so images with few masked patches count as much as others; the images are
    then averaged over the whole global batch (every process's share), so splitting a batch
    over processes does not change the loss its gradients average to."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    def teacher_probs(self, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
        """(B, N, K) logits -> centred, sharpened probabilities."""
        return F.softmax((teacher_logits - self.center) / temp, dim=-1)

    def forward(
        self,
        student_logits: torch.Tensor,  # (B, N, K)
        teacher_probs: torch.Tensor,  # (B, N, K)
        masks: torch.Tensor,  # (B, N) bool
    ) -> torch.Tensor:
        per_token = torch.sum(
            -teacher_probs * F.log_softmax(student_logits / self.student_temp, dim=-1), dim=-1
        )  # (B, N)
        weights = masks.float() / masks.sum(dim=1, keepdim=True).clamp(min=1)
        per_image = (per_token * weights).sum(dim=1)  # (B,), 0 for an image without a mask
        # every process takes part in the count, even one whose share has no mask
        n_masked = _all_reduce_sum(masks.any(dim=1).sum().float().detach())
        world = dist.get_world_size() if _distributed() else 1
        # DDP averages gradients over the processes: scaled by their number, this rank's sum
        # over the global count averages to the global batch's mean
        return per_image.sum() * world / n_masked.clamp(min=1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor, masks: torch.Tensor) -> None:
        """Centre from the teacher's outputs at the masked positions of the global batch."""
        sel = teacher_logits[masks].float()  # (M, K)
        total = _all_reduce_sum(sel.sum(dim=0).reshape(1, 1, -1))
        count = _all_reduce_sum(torch.tensor(float(len(sel)), device=total.device))
        if count > 0:
            batch_center = total / count
            self.center.mul_(self.center_momentum).add_(
                batch_center, alpha=1 - self.center_momentum
            )


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimator on L2-normalised embeddings: pushes each sample
    away from its nearest neighbour in the batch, spreading features out (DINOv2)."""

    def forward(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1, eps=eps)  # (B, D)
        if len(x) < 2:
            return x.sum() * 0.0
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)
        nn_idx = dots.argmax(dim=1)
        dist_nn = (x - x[nn_idx]).norm(dim=-1)
        return -torch.log(dist_nn + eps).mean()
