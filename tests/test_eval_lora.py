"""LoRA as the protocol does it: separate q/v adapters on every block, exact at initialisation,
only adapters and head train, the step schedule grows with the shots, runs are reproducible."""

import copy
import itertools

import numpy as np
import pytest
import timm
import torch
import zarr

from cytofm.config import EvalConfig, LoraConfig
from cytofm.errors import ConfigError
from cytofm.eval.backbones import LoadedBackbone
from cytofm.eval.features import preprocess
from cytofm.eval.lora import (
    LoraClassifier,
    budget,
    lr_factor,
    protocol_steps,
    train_lora,
)
from cytofm.eval.qkv import split_qkv

DEPTH = 3


def _backbone(depth=DEPTH):
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch16_224",
        num_classes=0,
        embed_dim=32,
        depth=depth,
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


SETTINGS = LoraConfig(rank=2, alpha=4.0, dropout=0.0, batch_size=8)


def _train(bb, images, labels, lr=1e-2, seed=0, steps=4, settings=SETTINGS):
    return train_lora(bb, images, labels, 3, settings, lr=lr, seed=seed, steps=steps)


def test_split_qkv_is_bit_identical():
    bb = _backbone()
    split = copy.deepcopy(bb.model)
    names = split_qkv(split)
    assert names == [f"blocks.{i}.attn" for i in range(DEPTH)]
    assert "qkv" not in dict(split.named_modules())["blocks.0.attn"]._modules
    x = preprocess(_data()[0], bb, "cpu")
    with torch.no_grad():
        assert torch.equal(bb.model(x), split(x))
    # a copy runs its own projections, not the original's
    clone = copy.deepcopy(split)
    with torch.no_grad():
        clone.blocks[0].attn.v.weight.zero_()
        assert not torch.equal(clone(x), split(x))
        assert torch.equal(bb.model(x), split(x))


def test_adapters_are_on_q_and_v_of_every_block_and_exact_at_init():
    bb = _backbone()
    x = preprocess(_data()[0][:6], bb, "cpu")
    with torch.no_grad():
        plain = bb.model(x)
    model = LoraClassifier(copy.deepcopy(bb.model), 3, LoraConfig()).eval()
    expected = [f"blocks.{i}.attn.{p}" for i in range(DEPTH) for p in ("q", "v")]
    assert model.adapted_modules() == expected
    # rank 2: A (2 x 32) and B (32 x 2) per adapted layer; the head is the only other weight
    names = model.trainable_names()
    adapters = [n for n in names if "lora_" in n]
    assert len(adapters) == 2 * len(expected)
    assert all("lora_" in n or n.startswith("head.") for n in names), names
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if "lora_" in n}
    assert {s for n, s in shapes.items() if "lora_A" in n} == {(2, 32)}
    assert {s for n, s in shapes.items() if "lora_B" in n} == {(32, 2)}
    with torch.no_grad():  # B starts at zero: the adapted backbone is the backbone
        assert torch.equal(model.backbone(x), plain)


def test_other_target_modules_are_honoured():
    bb = _backbone(depth=1)
    s = LoraConfig(target_modules=("q", "k", "v", "proj"))
    model = LoraClassifier(copy.deepcopy(bb.model), 3, s)
    assert sorted(model.adapted_modules()) == [
        f"blocks.0.attn.{p}" for p in ("k", "proj", "q", "v")
    ]


def test_fused_qkv_target_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"'qkv' is split .* \[q, v\]"):
        EvalConfig().updated({"lora.target_modules": ("qkv",)})


def test_training_changes_adapters_but_not_base_weights():
    bb = _backbone()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    images, labels = _data()
    model = _train(bb, images, labels)
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
        if ".attn.qkv." in k:  # the fused weight lives on as the rows of q, k and v
            w = torch.cat([base[k.replace("qkv", p)] for p in "qkv"])
            assert torch.equal(w, v), f"base weight {k} changed"
        else:
            assert torch.equal(base[k], v), f"base weight {k} changed"
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert all(v.abs().sum() > 0 for v in lora_b), "adapters did not train (B still zero)"


def test_merged_weights_give_the_same_outputs():
    bb = _backbone()
    images, labels = _data()
    model = _train(bb, images, labels)
    merged = model.merged()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    x = preprocess(images[:6], bb, "cpu")
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-5)


def test_same_seed_same_weights_other_seed_differs():
    bb = _backbone()
    images, labels = _data()
    a, b, c = (_train(bb, images, labels, seed=s) for s in (1, 1, 2))
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_lora_learns_a_simple_signal():
    bb = _backbone()
    images, labels = _data(n=48)
    settings = LoraConfig(rank=4, alpha=8.0, dropout=0.0)
    model = _train(bb, images, labels, lr=3e-3, steps=60, settings=settings)
    test_images, test_labels = _data(n=30, seed=1)
    with torch.no_grad():
        pred = model(preprocess(test_images, bb, "cpu")).argmax(1).numpy()
    # class 1 (dark square) must be told apart from the noise classes
    assert ((pred == 1) == (test_labels == 1)).mean() >= 0.9


@pytest.mark.parametrize("shots,expected", [(1, 150), (2, 250), (16, 1650), (50, 5050)])
def test_step_schedule_grows_with_the_shots(shots, expected):
    assert protocol_steps(LoraConfig(), shots=shots) == expected
    plan = budget(LoraConfig(), shots=shots)
    assert plan["steps"] == expected and plan["warmup_steps"] == 50 and not plan["reduced"]


def test_data_share_runs_take_epochs_of_batches():
    # 100 epochs of ceil(70 / 32) = 3 batches, after the warm-up
    assert protocol_steps(LoraConfig(), n_train=70) == 50 + 300


def test_a_cap_is_a_reduced_budget_with_the_same_shape():
    plan = budget(LoraConfig(max_steps=75), shots=1)
    assert plan == {
        "steps": 75,
        "warmup_steps": 25,
        "protocol_steps": 150,
        "protocol_warmup_steps": 50,
        "reduced": True,
        "departures": ["75 of 150 steps"],
    }
    assert not budget(LoraConfig(max_steps=500), shots=1)["reduced"]


def test_a_shorter_grid_another_rank_or_other_layers_are_a_reduced_budget():
    plan = budget(LoraConfig(lrs=(1e-3, 1e-4), rank=4, target_modules=("q", "k", "v")), shots=1)
    assert plan["reduced"] and plan["steps"] == plan["protocol_steps"]
    assert plan["departures"] == [
        "2 of 5 learning rates",
        "rank 4, not 2",
        "adapters on q+k+v, not q+v",
    ]
    assert budget(LoraConfig(), shots=1)["departures"] == []


@pytest.mark.parametrize("rslora, scale", [(True, 4.0 / np.sqrt(2)), (False, 4.0 / 2)])
def test_the_update_is_scaled_by_alpha_over_sqrt_rank_by_default(rslora, scale):
    assert LoraConfig().rslora  # the protocol's scaling is the default
    model = LoraClassifier(_backbone().model, 3, LoraConfig(rank=2, alpha=4.0, rslora=rslora))
    q = dict(model.backbone.named_modules())["base_model.model.blocks.0.attn.q"]
    assert q.scaling["default"] == pytest.approx(scale)


def test_lora_keeps_the_learning_rate_best_on_validation(monkeypatch):
    """The protocol's selection as the evaluate stage runs it: one adapter per learning rate,
    the one with the best validation score kept, its test probabilities returned."""
    import cytofm.eval.lora as lora_mod
    from cytofm.eval.protocols import EvalInputs, Lora
    from cytofm.eval.splits import Split

    labels = np.arange(30) % 3
    split = Split(np.arange(0, 12), np.arange(12, 21), np.arange(21, 30), "given")
    good = {0.003: 0.9, 0.01: 0.2, 0.001: 0.6}  # how often each rate's model is right

    def fake_train(bb, images, y, n_classes, settings, lr, seed, **kw):
        return lr  # the "model" is its learning rate

    def fake_predict(model, bb, images, device):
        rng = np.random.default_rng(int(model * 1e4))
        y = images[:, 0, 0, 0].astype(int)  # the label, written into the image
        right = rng.random(len(y)) < good[model]
        guess = np.where(right, y, (y + 1) % 3)
        return np.eye(3)[guess] * 0.8 + 0.2 / 3

    monkeypatch.setattr(lora_mod, "train_lora", fake_train)
    monkeypatch.setattr(lora_mod, "predict_proba", fake_predict)
    cfg = EvalConfig().updated({"lora.lrs": [0.01, 0.003, 0.001]})
    images = np.zeros((30, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = labels
    proto = Lora(EvalInputs(None, cfg, None, labels, ["a", "b", "c"], split, None))
    proto.bb, proto.device = None, "cpu"
    proto.images = zarr.create_array(zarr.storage.MemoryStore(), data=images, chunks=(8, 4, 4, 3))
    proto.settings = cfg.lora
    proto.val_images, proto.test_images = images[split.val], images[split.test]
    proto.calib_images = images[:0]
    p, chosen = proto.run(split.train, 0, ("shots", 4))
    assert chosen["lr"] == 0.003
    assert chosen["val"]["0.003"] == max(chosen["val"].values())
    assert len(chosen["val"]) == 3
    np.testing.assert_allclose(p, fake_predict(0.003, None, images[split.test], "cpu"))


def test_learning_rate_warms_up_then_decays_to_the_floor():
    f = [lr_factor(t, 150, 50, 1e-3, 1e-6) for t in range(150)]
    assert f[0] == pytest.approx(1 / 50) and f[49] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(f[:50]))  # linear warm-up
    assert all(a >= b for a, b in itertools.pairwise(f[50:]))  # cosine decay
    assert f[-1] == pytest.approx(1e-3 + (1 - 1e-3) * 0.5 * (1 + np.cos(np.pi * 99 / 100)))
    assert lr_factor(150, 150, 50, 1e-3, 1e-6) == pytest.approx(1e-3)
