"""GPU discovery without torch, and what `resources.gpu` asks for."""

from __future__ import annotations

import pytest

from cytofm.hardware import gpu_request, visible_gpus


@pytest.fixture
def dev(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"):
        (tmp_path / name).touch()
    return tmp_path


def test_device_nodes_are_counted(dev, tmp_path):
    assert visible_gpus({}, dev) == 2  # nvidiactl and nvidia-uvm are not GPUs
    assert visible_gpus({}, tmp_path / "missing") == 0


@pytest.mark.parametrize(
    ("visible", "expected"), [("0", 1), ("0,1", 2), ("", 0), ("-1", 0), ("0,1,2,3", 2)]
)
def test_cuda_visible_devices_narrows_them(dev, visible, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": visible}, dev) == expected


def test_no_device_nodes_means_no_gpu_whatever_the_variable_says(tmp_path):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0"}, tmp_path) == 0


@pytest.mark.parametrize(
    ("setting", "local", "here", "expected"),
    [
        (True, True, 0, 1),  # forced on
        (False, False, 4, 0),  # forced off, even on a cluster
        ("auto", False, 0, 1),  # a cluster: the nodes have the GPUs, not the submitting host
        ("auto", True, 1, 1),  # a GPU workstation
        ("auto", True, 0, 0),  # a laptop: GPU rules are not queued behind a missing GPU
    ],
)
def test_gpu_request(setting, local, here, expected):
    assert gpu_request(setting, local=local, gpus_here=here) == expected


def test_gpu_request_refuses_other_values():
    with pytest.raises(ValueError, match="auto, true, false"):
        gpu_request("yes", local=True, gpus_here=0)
