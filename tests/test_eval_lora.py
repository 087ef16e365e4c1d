"""LoRA wiring: only adapters (and the head) train, merging is exact, runs are reproducible."""

import numpy as np
import pytest
import timm
import torch

from cytofm.eval.backbones import LoadedBackbone
from cytofm.eval.features import preprocess
from cytofm.eval.lora import LoraClassifier, LoraSettings, n_steps, train_lora


def _backbone():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch16_224",
        num_classes=0,
        embed_dim=32,
        depth=2,
        num_heads=2,
        patch_size=8,
        img_size=32,
        dynamic_img_size=True,
    ).eval()
    return LoadedBackbone(model, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), {"name": "tiny"})


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    images[labels == 1, 8:24, 8:24] = 30  # a learnable signal: a dark square
    return images, labels


SETTINGS = LoraSettings(rank=2, alpha=4.0, dropout=0.0, min_steps=4, max_steps=4, batch_size=8)


def test_only_adapter_and_head_weights_are_trainable():
    bb = _backbone()
    model = LoraClassifier(bb.model, 3, SETTINGS)
    names = model.trainable_names()
    assert names, "nothing trains"
    assert all("lora_" in n or n.startswith("head.") for n in names), names
    # rank 2 on every block's fused qkv projection: A (2 x 32) and B (96 x 2) per block
    adapters = [n for n in names if "lora_" in n]
    assert len(adapters) == 2 * 2
    assert all(".attn.qkv." in n for n in adapters)


def test_training_changes_adapters_but_not_base_weights():
    bb = _backbone()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    images, labels = _data()
    model = train_lora(bb, images, labels, 3, SETTINGS, lr=1e-2, seed=0)
    # the caller's backbone is untouched (train_lora works on a copy)
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    state = model.backbone.state_dict()
    base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in state.items()
        if "lora_" not in k
    }
    for k, v in before.items():
        assert torch.equal(base[k], v), f"base weight {k} changed"
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b), "adapters did not train (B still zero)"


def test_merged_weights_give_the_same_outputs():
    bb = _backbone()
    images, labels = _data()
    model = train_lora(bb, images, labels, 3, SETTINGS, lr=1e-2, seed=0)
    merged = model.merged()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    x = preprocess(images[:6], bb, "cpu")
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-5)


def test_same_seed_same_weights_other_seed_differs():
    bb = _backbone()
    images, labels = _data()
    a = train_lora(bb, images, labels, 3, SETTINGS, lr=1e-2, seed=1)
    b = train_lora(bb, images, labels, 3, SETTINGS, lr=1e-2, seed=1)
    c = train_lora(bb, images, labels, 3, SETTINGS, lr=1e-2, seed=2)
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_lora_learns_a_simple_signal():
    bb = _backbone()
    images, labels = _data(n=48)
    settings = LoraSettings(rank=4, alpha=8.0, dropout=0.0, min_steps=60, max_steps=60)
    model = train_lora(bb, images, labels, 3, settings, lr=3e-3, seed=0)
    test_images, test_labels = _data(n=30, seed=1)
    with torch.no_grad():
        pred = model(preprocess(test_images, bb, "cpu")).argmax(1).numpy()
    # class 1 (dark square) must be told apart from the noise classes
    assert ((pred == 1) == (test_labels == 1)).mean() >= 0.9


@pytest.mark.parametrize("n,expected", [(8, 30), (64, 40), (4000, 300)])
def test_step_budget(n, expected):
    s = LoraSettings(batch_size=32, epochs=20, min_steps=30, max_steps=300)
    assert n_steps(n, s) == expected
