"""The spiking runtime on a GPU gives what it gives on the CPU (skipped where there is no CUDA device).

Convolutions on the GPU round differently from the CPU's (cuDNN's algorithms; TF32 is turned
off here, as it rounds inputs to 10 mantissa bits), and a membrane sitting at a threshold can
then fire one step earlier or later, so the check is statistical, not bitwise: outputs within
a small tolerance and the same predictions on nearly every sample. The neuron kernels
themselves are bit-exact on the GPU (tests/kernels).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import snncompiler as snnc
from examples.workloads import DigitsCNN, digits, export_onnx, train_classifier
from snncompiler.data import Dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("maxpool", ["rate", "output"])
def test_gpu_run_matches_cpu(tmp_path, maxpool, no_tf32):
    train, test = digits()
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(width=8), train, epochs=8)
    path = export_onnx(model, (1, 8, 8), tmp_path / "cnn.onnx")
    compiled = snnc.compile(path, Dataset(train.x[:256]), maxpool=maxpool, quiet=True)
    x = test.x[:200]
    cpu = compiled.run(x, 16, checkpoints=[4, 16])
    gpu = compiled.run(x, 16, checkpoints=[4, 16], device="cuda")
    for t in (4, 16):
        assert np.abs(cpu[t] - gpu[t]).mean() < 0.02 * (np.abs(cpu[t]).mean() + 1e-6)
        assert (cpu[t].argmax(1) == gpu[t].argmax(1)).mean() >= 0.97
    assert compiled.last_runner.device.type == "cuda"
