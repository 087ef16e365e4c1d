"""iBOT building blocks: schedules, masking, losses, heads, views, data order."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from cytofm.ssl.augment import ViewMaker, draw_view_params
from cytofm.ssl.heads import DINOHead
from cytofm.ssl.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from cytofm.ssl.masking import BlockMasker
from cytofm.ssl.schedules import cosine_schedule, linear_warmup_then_constant


def test_cosine_schedule_with_warmup():
    s = cosine_schedule(1.0, 0.1, total_steps=100, warmup_steps=10)
    assert len(s) == 100 and s[0] == 0.0 and s[10] == pytest.approx(1.0)
    assert s[-1] == pytest.approx(0.1) and np.all(np.diff(s[10:]) <= 1e-12)
    assert np.all(np.diff(s[:11]) > 0)
    t = linear_warmup_then_constant(0.04, 0.07, 5, 20)
    assert t[0] == 0.04 and t[5:].tolist() == [0.07] * 15


def test_block_mask_count_and_determinism():
    masker = BlockMasker((8, 8))
    for n in (0, 1, 10, 32, 63):
        m = masker(n, torch.Generator().manual_seed(n))
        assert m.shape == (64,) and int(m.sum()) == n
    a = masker(20, torch.Generator().manual_seed(3))
    b = masker(20, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_block_masks_are_blocky():
    """Block masking leaves far fewer mask/unmask borders than random masking would."""
    masker = BlockMasker((14, 14))
    m = masker(80, torch.Generator().manual_seed(0)).view(14, 14)
    edges = (m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum()
    rnd = torch.zeros(196, dtype=torch.bool)
    rnd[torch.randperm(196, generator=torch.Generator().manual_seed(0))[:80]] = True
    rnd = rnd.view(14, 14)
    rnd_edges = (rnd[1:] != rnd[:-1]).sum() + (rnd[:, 1:] != rnd[:, :-1]).sum()
    assert edges < 0.6 * rnd_edges


def test_batch_masks_ratio_and_probability():
    masker = BlockMasker((8, 8))
    masks = masker.batch(40, (0.1, 0.5), 0.5, torch.Generator().manual_seed(1))
    masked = masks.any(dim=1)
    assert int(masked.sum()) == 20
    ratios = masks[masked].float().mean(dim=1)
    assert ratios.min() >= 0.09 and ratios.max() <= 0.51


def test_dino_loss_matches_manual_cross_entropy_and_skips_same_view():
    torch.manual_seed(0)
    loss = DINOLoss(out_dim=5, student_temp=0.1)
    s = [torch.randn(3, 5) for _ in range(3)]  # 2 global + 1 local student views
    t_logits = torch.randn(6, 5)
    q = loss.teacher_probs(t_logits, temp=0.05).chunk(2)
    got = loss(s, list(q))
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # (teacher view, student view), same view skipped
    manual = sum(
        torch.sum(-q[t] * F.log_softmax(s[v] / 0.1, dim=-1), dim=-1).mean() for t, v in pairs
    ) / len(pairs)
    assert torch.allclose(got, manual)


def test_centre_is_an_ema_of_teacher_outputs():
    loss = DINOLoss(out_dim=3, center_momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    loss.update_center(logits)
    assert torch.allclose(loss.center, 0.1 * logits.mean(0, keepdim=True))
    assert torch.allclose(loss.teacher_probs(logits, 1.0).sum(-1), torch.ones(2))


def test_ibot_loss_uses_masked_positions_only():
    torch.manual_seed(0)
    loss = IBOTPatchLoss(out_dim=4)
    student = torch.randn(2, 6, 4)
    teacher = F.softmax(torch.randn(2, 6, 4), dim=-1)
    masks = torch.zeros(2, 6, dtype=torch.bool)
    masks[0, :2] = True
    base = loss(student, teacher, masks)
    student2 = student.clone()
    student2[0, 3:, 0] += 10.0  # unmasked tokens of image 0
    student2[1, :, 0] += 10.0  # image 1 has no mask at all
    assert torch.allclose(loss(student2, teacher, masks), base)
    student2[0, 0, 0] += 1.0  # a masked token's prediction (one logit: softmax changes)
    assert not torch.allclose(loss(student2, teacher, masks), base)
    zero = loss(student, teacher, torch.zeros(2, 6, dtype=torch.bool))
    assert zero.item() == 0.0


def test_koleo_prefers_spread_embeddings():
    koleo = KoLeoLoss()
    spread = torch.eye(4)
    clustered = torch.eye(4) * 0.01 + torch.tensor([1.0, 0, 0, 0])
    assert koleo(spread) < koleo(clustered)


def test_dino_head_shapes_and_fixed_prototype_norm():
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8)
    out = head(torch.randn(5, 7, 16))
    assert out.shape == (5, 7, 32)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(32), atol=1e-5)


def test_multicrop_views_shapes_determinism_and_centre():
    from cytofm.config.sections import CropsConfig

    crops = CropsConfig(global_size=32, local_size=16, n_local=3, keep_centre=0.2)
    maker = ViewMaker(crops, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    batch = torch.randint(0, 255, (4, 48, 48, 3), dtype=torch.uint8)

    def gens(seed):
        return [torch.Generator().manual_seed(seed * 10 + i) for i in range(4)]

    g1, l1 = maker(batch, draw_view_params(gens(0), crops, 48))
    g2, l2 = maker(batch, draw_view_params(gens(0), crops, 48))
    assert g1.shape == (8, 3, 32, 32) and l1.shape == (12, 3, 16, 16)
    assert torch.equal(g1, g2) and torch.equal(l1, l2)
    assert not torch.equal(g1, maker(batch, draw_view_params(gens(1), crops, 48))[0])
    for scale in (crops.global_scale, crops.local_scale):
        tiny = CropsConfig(global_scale=scale, local_scale=scale, n_local=0, keep_centre=0.2)
        gen = [torch.Generator().manual_seed(1 + i) for i in range(100)]
        x0, y0, w, h = draw_view_params(gen, tiny, 48).boxes.reshape(-1, 4).T
        assert (x0 >= 0).all() and (x0 + w <= 48).all() and (y0 >= 0).all()
        assert (y0 + h <= 48).all()
        # the central 20% of the patch (where the nucleus is) stays in view
        assert (((x0 <= 24 - 4.8) & (x0 + w >= 24 + 4.8)) | (w < 9.6)).all()
        assert (((y0 <= 24 - 4.8) & (y0 + h >= 24 + 4.8)) | (h < 9.6)).all()


def test_the_crops_section_sets_every_augmentation_range():
    """Brightness, contrast and blur come from ``pretrain.crops`` like the crop sizes do: no
    augmentation range is fixed in the code."""
    from cytofm.config.sections import CropsConfig

    gens = [torch.Generator().manual_seed(i) for i in range(64)]
    crops = CropsConfig(brightness=0.0, contrast=0.3, blur_sigma=(0.5, 0.5), blur_prob=1.0)
    p = draw_view_params(gens, crops, 48)
    assert torch.all(p.color[..., 6] == 1)  # brightness 0: factor 1
    contrast = p.color[..., 7]
    assert contrast.min() >= 0.7 and contrast.max() <= 1.3 and contrast.std() > 0.1
    assert torch.allclose(p.blur, torch.full_like(p.blur, 0.5))
    wide = draw_view_params(gens, crops.updated({"blur_sigma": (0.5, 2.0)}), 48).blur
    assert wide.max() > 1.0  # the range reaches the views
    maker = ViewMaker(crops.updated({"blur_sigma": (0.5, 2.0)}), (0.5,) * 3, (0.25,) * 3)
    g, _ = maker(torch.randint(0, 255, (64, 48, 48, 3), dtype=torch.uint8), p)
    assert torch.isfinite(g).all()
