"""Backbones from config: pretrained exports, random controls, local timm weights, hub names."""

import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from cytofm.errors import InputDataError
from cytofm.eval.backbones import BackboneSpec, load_backbone_spec
from cytofm.eval.features import embed_array, preprocess
from cytofm.ssl.export import export_backbone

ARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _vit(seed=0, **extra):
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_small_patch16_224",
        num_classes=0,
        patch_size=8,
        img_size=32,
        dynamic_img_size=True,
        **ARGS,
        **extra,
    ).eval()


def export_tiny(out, seed: int, patch_mpp: float, patch_um: float, **kw):
    """A 2-block ViT exported as the pretrain stage exports one (32 px input)."""
    export_backbone(
        _vit(seed=seed),
        out,
        arch="vit_small_patch16_224",
        model_args=dict(ARGS),
        img_size=32,
        patch_size=8,
        mean=[0.7, 0.6, 0.7],
        std=[0.2, 0.2, 0.2],
        patch_mpp=patch_mpp,
        patch_um=patch_um,
        **kw,
    )
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("bb") / "backbone", 3, 0.75, 24.0)


def _images(n=5):
    return np.random.default_rng(0).integers(0, 255, (n, 40, 40, 3), dtype=np.uint8)


def test_pretrained_loads_with_its_preprocessing(exported):
    bb = load_backbone_spec(BackboneSpec("ssl", "pretrained"), exported)
    assert bb.input_size == 32 and bb.mean == (0.7, 0.6, 0.7) and bb.mpp == 0.75
    ref = _vit(seed=3)
    x = preprocess(_images(), bb, "cpu")
    with torch.no_grad():
        assert torch.allclose(bb.model(x), ref(x), atol=1e-6)
    assert len(bb.identity["weights_sha256"]) == 64


def test_random_like_copies_architecture_not_weights(exported):
    ssl = load_backbone_spec(BackboneSpec("ssl", "pretrained"), exported)
    rnd = load_backbone_spec(BackboneSpec("rnd", "random", like="ssl", seed=1), exported)
    again = load_backbone_spec(BackboneSpec("rnd", "random", like="ssl", seed=1), exported)
    assert rnd.preprocessing == ssl.preprocessing
    assert rnd.identity["weights_sha256"] != ssl.identity["weights_sha256"]
    assert rnd.identity["weights_sha256"] == again.identity["weights_sha256"]  # seeded


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_arch_with_local_weights_file(tmp_path, suffix):
    model = _vit(seed=5)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)  # a common checkpoint wrapper
    spec = BackboneSpec(
        "local",
        "timm",
        arch="vit_small_patch16_224",
        weights=str(path),
        model_args={**ARGS, "patch_size": 8, "img_size": 32, "dynamic_img_size": True},
        input_size=32,
    )
    bb = load_backbone_spec(spec)
    assert bb.mean == pytest.approx((0.5, 0.5, 0.5))  # timm's default cfg of this arch
    feats = embed_array(bb, _images(), batch_size=2)
    ref = embed_array(type(bb)(model, 32, bb.mean, bb.std, {}), _images(), batch_size=2)
    assert np.allclose(feats, ref, atol=1e-6)


class _Evil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned')",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _Evil()}, fh)
    spec = BackboneSpec("evil", "timm", arch="vit_small_patch16_224", weights=str(path))
    with pytest.raises(InputDataError, match="weights_only"):
        load_backbone_spec(spec)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _vit().state_dict().items()}, str(path))
    spec = BackboneSpec(
        "wrong",
        "timm",
        arch="vit_small_patch16_224",
        weights=str(path),
        model_args={"embed_dim": 64, "depth": 2, "num_heads": 2},
    )
    with pytest.raises((InputDataError, RuntimeError), match="does not fit|size mismatch"):
        load_backbone_spec(spec)


def test_missing_weights_file_names_the_key(tmp_path):
    spec = BackboneSpec("uni", "timm", arch="vit_large_patch16_224", weights=str(tmp_path / "x"))
    with pytest.raises(InputDataError, match="backbones.uni.weights"):
        load_backbone_spec(spec)


def test_hub_name_loads_from_the_local_hugging_face_cache(exported, tmp_path):
    """The online code path (timm hf-hub:) with the files in a local cache, network off."""
    snap = tmp_path / "hub" / "models--cytofm--tiny-vit" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    cfg = json.loads((exported / "config.json").read_text())
    (snap / "config.json").write_text(json.dumps(cfg))
    (snap / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes())
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    code = textwrap.dedent(f"""
        import torch
        from cytofm.eval.backbones import BackboneSpec, load_backbone_spec
        hub = load_backbone_spec(BackboneSpec("hub", "hub", arch="hf-hub:cytofm/tiny-vit"))
        ssl = load_backbone_spec(BackboneSpec("ssl", "pretrained"), {str(exported)!r})
        assert hub.mean == ssl.mean, (hub.mean, ssl.mean)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(hub.model(x), ssl.model(x), atol=1e-6)
        print("ok")
    """)
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "hf"),
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok" in proc.stdout


def test_spec_validation_messages():
    with pytest.raises(Exception, match="kind 'timm' needs"):
        BackboneSpec("a", "timm", arch="vit_small_patch16_224")
    with pytest.raises(Exception, match="needs 'like'"):
        BackboneSpec("a", "random")
    with pytest.raises(Exception, match="kind must be one of"):
        BackboneSpec("a", "clip")


def test_checkpoint_at_another_image_size_is_resampled(tmp_path):
    """timm's own filter runs: position embeddings from 32 px weights fit a 48 px model."""
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _vit().state_dict().items()}, str(path))
    spec = BackboneSpec(
        "bigger",
        "timm",
        arch="vit_small_patch16_224",
        weights=str(path),
        model_args={**ARGS, "patch_size": 8, "img_size": 48},
        input_size=48,
    )
    bb = load_backbone_spec(spec)
    assert bb.model.pos_embed.shape[1] == 1 + 6 * 6
    assert np.isfinite(embed_array(bb, _images(2), batch_size=2)).all()
