import hashlib

from cytofm.provenance import config_hash, file_sha256, git_commit, provenance, tree_sha256


def test_config_hash_ignores_key_order_and_sees_values():
    a = {"x": 1, "y": {"b": 2, "a": [1, 2]}}
    b = {"y": {"a": [1, 2], "b": 2}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "x": 2})


def test_file_sha256(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc" * 10_000_000)
    assert file_sha256(f, chunk=1 << 20) == hashlib.sha256(b"abc" * 10_000_000).hexdigest()


def test_tree_sha256_sees_names_and_contents(tmp_path):
    (tmp_path / "a").write_text("1")
    h1 = tree_sha256(tmp_path)
    (tmp_path / "a").write_text("2")
    assert tree_sha256(tmp_path) != h1


def test_provenance_record(tmp_path):
    rec = provenance("tile", {"mpp": 0.5}, n=3)
    assert rec["stage"] == "tile" and rec["n"] == 3
    assert rec["config"] == {"mpp": 0.5} and rec["config_hash"] == config_hash({"mpp": 0.5})
    commit = git_commit()
    assert commit == "unknown" or len(commit.split("-")[0]) == 40
    assert git_commit(tmp_path) == "unknown"


def test_provenance_names_library_versions_and_cuda_where_torch_runs():
    """Versions come from the installed packages; a process that uses torch also records its
    CUDA build and, when a GPU ran, cuDNN and the device (None on this CPU machine)."""
    import importlib.metadata

    import torch

    versions = provenance("embed", {})["versions"]
    for name in ("numpy", "zarr", "torch", "timm", "scikit-learn", "openslide-python"):
        assert versions[name] == importlib.metadata.version(name)
    assert versions["cuda"] == torch.version.cuda
    if not torch.cuda.is_available():
        assert versions["gpu"] is None and versions["cudnn"] is None
