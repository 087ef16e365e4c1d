"""Multi-crop views made in batches (ViewMaker) against the step-by-step specification
(reference_view), and the loader that feeds them: uint8 patches and drawn parameters only."""

import numpy as np
import pytest
import torch

from cytofm.config.sections import CropsConfig
from cytofm.ssl.augment import ViewMaker, ViewParams, draw_view_params, reference_view
from cytofm.ssl.data import PatchSource
from cytofm.ssl.train import StepBatch, Trainer
from tests.test_ssl_train import TINY as SSL_TINY

# Largest difference allowed between a batched view and its reference, in pixel values of
# [0, 1] (mean 0 and std 1, so no normalisation scales it): float32 summation order only.
TOL = 2e-5
SIDE = 40
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _images(b: int = 6, side: int = SIDE) -> torch.Tensor:
    """uint8 (b, side, side, 3): smooth stained blobs on noise, so every filter has work."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    out = []
    for i in range(b):
        r = ((yy - side / 2 - i) ** 2 + (xx - side / 2 + i) ** 2).float().sqrt()
        blob = torch.stack([200 - 120 * (r < 8 + i), 190 - 60 * (r < 12), 220 - 40 * (r < 6)], -1)
        noise = torch.randint(-30, 30, (side, side, 3), generator=g)
        out.append((blob + noise).clamp(0, 255))
    return torch.stack(out).to(torch.uint8)


def _reference(imgs, params: ViewParams, crops, mean=ZERO, std=ONE):
    """Every view of every image, one at a time, view-major as the maker returns them."""
    x = imgs.permute(0, 3, 1, 2).float() / 255
    m, s = torch.tensor(mean), torch.tensor(std)
    views = {"global": [], "local": []}
    for v in range(params.boxes.shape[0]):
        size = crops.global_size if v < 2 else crops.local_size
        for i in range(len(x)):
            views["global" if v < 2 else "local"].append(
                reference_view(
                    x[i],
                    params.boxes[v, i],
                    params.dihedral[v, i],
                    params.color[v, i],
                    float(params.blur[v, i]),
                    size,
                    crops.hed_sigma > 0,
                    m,
                    s,
                )
            )
    return torch.stack(views["global"]), torch.stack(views["local"])


def _params(n_views: int, b: int, **fixed) -> ViewParams:
    """Identity views (whole patch, no flip, no stain change, no blur) with ``fixed`` set."""
    p = {
        "boxes": torch.tensor([0, 0, SIDE, SIDE]).repeat(n_views, b, 1),
        "dihedral": torch.zeros(n_views, b, dtype=torch.long),
        "color": torch.tensor([1.0, 1, 1, 0, 0, 0, 1, 1]).repeat(n_views, b, 1),
        "blur": torch.zeros(n_views, b),
    }
    for k, v in fixed.items():
        p[k] = torch.as_tensor(v, dtype=p[k].dtype).expand_as(p[k]).clone()
    return ViewParams(**p)


def _check(imgs, params, crops, **norm):
    maker = ViewMaker(crops, norm.get("mean", ZERO), norm.get("std", ONE))
    got = maker(imgs, params)
    want = _reference(imgs, params, crops, **norm)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= TOL * (1 / min(norm.get("std", ONE))), (a - b).abs().max()
    return got


CROPS = CropsConfig(global_size=24, local_size=12, n_local=2, hed_sigma=0.05)


@pytest.mark.parametrize(
    "box",
    [
        (0, 0, SIDE, SIDE),  # whole patch, downscaled 40 -> 24 and 40 -> 12
        (5, 9, 17, 23),  # upscaled (17 -> 24) and downscaled to the local size
        (30, 1, 4, 4),  # the smallest crop, at the edge
        (11, 11, 12, 12),  # exactly the local size: a plain copy there
    ],
)
def test_crop_and_resize_equal_the_reference(box):
    imgs = _images()
    _check(imgs, _params(4, len(imgs), boxes=box), CROPS)


@pytest.mark.parametrize("dihedral", range(8))
def test_every_flip_and_quarter_turn_equals_the_reference(dihedral):
    imgs = _images()
    got = _check(imgs, _params(4, len(imgs), boxes=(3, 7, 31, 26), dihedral=dihedral), CROPS)
    if dihedral:  # the view really changed
        same = _check(imgs, _params(4, len(imgs), boxes=(3, 7, 31, 26)), CROPS)
        assert not torch.allclose(got[0], same[0])


@pytest.mark.parametrize(
    "color",
    [
        (1.05, 0.95, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0),  # stain scale
        (1.0, 1.0, 1.0, 0.05, -0.05, 0.02, 1.0, 1.0),  # stain shift
        (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.1, 1.0),  # brightness
        (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.9),  # contrast
        (0.96, 1.04, 1.02, -0.03, 0.04, -0.01, 0.92, 1.08),  # all at once
    ],
)
def test_stain_and_brightness_contrast_equal_the_reference(color):
    imgs = _images()
    _check(imgs, _params(4, len(imgs), color=color), CROPS)


def test_views_without_stain_jitter_skip_it_as_the_reference_does():
    imgs = _images()
    crops = CropsConfig(global_size=24, local_size=12, n_local=2, hed_sigma=0.0)
    _check(imgs, _params(4, len(imgs), color=(1.0, 1, 1, 0, 0, 0, 1.05, 0.97)), crops)


@pytest.mark.parametrize("sigma", [0.1, 0.34, 0.5, 1.0])
def test_blur_equals_the_reference(sigma):
    imgs = _images()
    _check(imgs, _params(4, len(imgs), blur=sigma), CROPS)


def test_blur_with_different_sigmas_in_one_batch():
    """Kernels of different radii in one grouped convolution, unblurred images untouched."""
    imgs = _images(b=5)
    sig = torch.tensor([0.0, 0.2, 1.0, 0.0, 0.6]).repeat(4, 1)
    p = _params(4, 5)
    _check(imgs, p._replace(blur=sig), CROPS)


def test_drawn_views_equal_the_reference_with_normalisation():
    """Every augmentation drawn at random, as in training, with the backbone's normalisation."""
    imgs = _images(b=8)
    crops = CropsConfig(global_size=24, local_size=12, n_local=3, hed_sigma=0.05, blur_prob=0.5)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(8)]
    params = draw_view_params(gens, crops, SIDE)
    assert params.boxes.shape == (5, 8, 4) and params.color.shape == (5, 8, 8)
    assert len(set(params.dihedral.flatten().tolist())) > 4 and (params.blur > 0).any()
    assert (params.blur == 0).any()
    _check(imgs, params, crops, mean=(0.7, 0.6, 0.75), std=(0.2, 0.25, 0.15))


def test_an_images_views_depend_on_its_generator_alone():
    crops = CropsConfig(n_local=2)
    a = draw_view_params([torch.Generator().manual_seed(s) for s in (1, 2, 3)], crops, SIDE)
    b = draw_view_params([torch.Generator().manual_seed(s) for s in (9, 2)], crops, SIDE)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x[:, 1], y[:, 1]) and not torch.equal(x[:, 0], y[:, 0])


# -- the loader ---------------------------------------------------------------------------

TINY = SSL_TINY.updated(
    {
        "model.drop_path": 0.0,
        "loss.koleo_weight": 0.1,
        "optim.steps": 4,
        "checkpoint_every": 2,
        "probe.dataset": "",
    }
)


def test_workers_hand_over_uint8_patches_and_parameters_only(random_patches, tmp_path, monkeypatch):
    """No float image and no view leaves a worker: the views are made in the training process."""
    made_in = []
    real = ViewMaker.__call__

    def spy(self, patches, params):
        made_in.append(torch.utils.data.get_worker_info())
        return real(self, patches, params)

    monkeypatch.setattr(ViewMaker, "__call__", spy)
    tr = Trainer(TINY.updated({"num_workers": 2}), PatchSource([random_patches]), tmp_path)
    assert tr.num_workers == 2
    for batch in tr.loader(0, 3):
        assert isinstance(batch, StepBatch)
        assert batch.patches.dtype == torch.uint8 and batch.patches.shape == (8, 40, 40, 3)
        assert batch.masks.dtype == torch.bool and batch.masks.shape == (16, 16)
        assert batch.boxes.dtype == torch.int64 and batch.boxes.shape == (4, 8, 4)
        assert batch.dihedral.dtype == torch.int64 and batch.blur.shape == (4, 8)
        assert batch.color.shape == (4, 8, 8)  # a few numbers per view, no pixels
        tr.train_step(batch)
    assert made_in == [None, None, None]  # every view was made in this process


def test_two_workers_and_a_resume_see_the_batches_of_one_process(random_patches, tmp_path):
    """Steps 0-1 from two workers, a checkpoint, steps 2-3 from two workers of a new trainer:
    the batches equal those one process makes in order, and so do the weights."""
    seen: list[StepBatch] = []

    def recording(tr):
        step = tr.train_step

        def wrapped(batch):
            seen.append(batch)
            return step(batch)

        tr.train_step = wrapped
        return tr

    cfg = TINY.updated({"num_workers": 2})
    first = recording(Trainer(cfg, PatchSource([random_patches]), tmp_path / "w"))
    first.fit(stop_at=2)
    second = recording(Trainer(cfg, PatchSource([random_patches]), tmp_path / "w"))
    assert second.load_checkpoint() and second.step == 2
    second.fit()
    alone = Trainer(TINY.updated({"num_workers": 0}), PatchSource([random_patches]), tmp_path / "1")
    assert len(seen) == 4
    for step, batch in enumerate(seen):
        for got, want in zip(batch, alone.make_batch(step), strict=True):
            assert torch.equal(got, want)
    alone.fit()
    for k, v in alone.teacher.state_dict().items():
        assert torch.allclose(v, second.teacher.state_dict()[k], rtol=1e-5, atol=1e-6), k
    assert np.isfinite([h["loss"] for h in second.history if "loss" in h]).all()
