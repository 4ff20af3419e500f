"""Before any test module imports triton (SpikingJelly's modules do, at import time): on a
machine without a GPU, Triton kernels run through the interpreter. The decorator reads
TRITON_INTERPRET when a kernel is defined, so it must be set before the first import. The
library's caches go to a temporary directory of the session."""

import os
import tempfile

import pytest
import torch
import torch.nn as nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # the event kernels' cost model goes to a directory of this test session, not the user's
    # ~/.cache/snncompiler (on a GPU machine the compiled CUDA kernel is cached there too, and
    # compiling it afresh every session would cost a minute of device time)
    os.environ.setdefault("SNNC_CACHE_DIR", tempfile.mkdtemp(prefix="snnc-test-cache-"))


@pytest.fixture(scope="session")
def small_digits_cnn(tmp_path_factory):
    """A DigitsCNN of width 8 trained 6 epochs on the digits train split, exported to ONNX:
    (path, train, test). Trained once per test session."""
    from examples.workloads import DigitsCNN, digits, export_onnx, train_classifier

    train, test = digits()
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(width=8), train, epochs=6)
    return export_onnx(model, (1, 8, 8), tmp_path_factory.mktemp("cnn") / "cnn.onnx"), train, test


class Residual(nn.Module):
    """conv-ReLU, then a conv-ReLU branch added back, then ReLU, AvgPool, Flatten, Linear (8×8
    input, 3 outputs): residual adds of two neurons with their own θ, through pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))

    def forward(self, x):
        a = self.stem(x)
        return self.head(a + self.branch(a))


def assert_graph_is_onnx_model(graph, path, x, rtol: float, atol: float) -> None:
    """The IR ``graph`` (a compiler's ANN, before neurons clip it) gives onnxruntime's output for
    the ONNX file at ``path`` on ``x`` (the file's input is named ``x``)."""
    import numpy as np
    import onnxruntime as ort

    from snncompiler.runtime.executor import Executor

    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = Executor(graph).run({graph.inputs[0].name: torch.from_numpy(x)})[graph.outputs[0].name].numpy()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def reloaded_and_recalibrated(compiled, tmp_path, x, calib):
    """Save ``compiled``, load the file back (its outputs at T=8 on ``x`` equal to 1e-5) and
    recalibrate the file on ``calib`` (light): (loaded, recalibrated)."""
    import numpy as np

    import snncompiler as snnc

    out = tmp_path / "m.snn.onnx"
    compiled.save(out)
    loaded = snnc.load(out)
    np.testing.assert_allclose(loaded.run(x, 8), compiled.run(x, 8), rtol=1e-5, atol=1e-6)
    return loaded, snnc.calibrate(out, calib, calibration="light", quiet=True)
