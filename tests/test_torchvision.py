"""Frontend + runtime parity with onnxruntime on torchvision architectures (random init, eval mode)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from snncompiler.formats.onnx import load_graph
from snncompiler.runtime import run_graph

tv = pytest.importorskip("torchvision")

# (architecture, smallest input side this architecture exports and runs at, constructor kwargs)
ARCHS = {
    "resnet18": (32, {}),
    "vgg11_bn": (224, {}),
    "mobilenet_v2": (32, {}),
    "densenet121": (32, {}),
    "squeezenet1_0": (64, {}),
    "shufflenet_v2_x1_0": (32, {}),
    "googlenet": (32, {"aux_logits": False, "init_weights": True}),
    "alexnet": (224, {}),
    "efficientnet_b0": (32, {}),
}
OPSETS = (11, 17)  # the TorchScript exporter's range; 21 is covered by the per-operator tests


def export(arch: str, opset: int | None, path) -> np.ndarray:
    """Export ``arch`` (random init, seed 0) with the TorchScript exporter at ``opset``, or with
    torch's default exporter (torch.export-based, "dynamo", the default from torch 2.9; its own
    opset) when ``opset`` is None; returns the input it was traced on."""
    side, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    model = getattr(tv.models, arch)(weights=None, **kwargs).eval()
    x = torch.randn(2, 3, side, side)
    how = {"dynamo": True} if opset is None else {"dynamo": False, "opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["x"], **how)
    return x.numpy()


@pytest.mark.parametrize(
    "arch,opset",
    [(a, o) for a in ARCHS for o in OPSETS]
    + [pytest.param(a, None, id=f"{a}-dynamo") for a in ("resnet18", "mobilenet_v2", "efficientnet_b0", "googlenet")],
)
def test_torchvision_parity(arch, opset, tmp_path):
    path = tmp_path / f"{arch}.onnx"
    x = export(arch, opset, path)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = run_graph(load_graph(path), x)
    # relative to the output's scale: random-init MobileNetV2 and EfficientNet-B0 output about
    # 1e-9 and 1e-14 (zero-initialised last BN scales), where an absolute floor could not fail;
    # measured |snnc − onnxruntime| / max|ref| ≤ 2.5e-6 on every architecture and exporter
    scale = float(np.abs(ref).max())
    assert scale > 0
    tol = 1e-4 * scale
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= tol


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
@pytest.mark.parametrize("quant_format", ["QDQ", "QOperator"])
def test_torchvision_int8(arch, quant_format, tmp_path):
    """onnxruntime's int8 model of the architecture, QDQ or QOperator (QLinearConv and its
    com.microsoft QLinearAdd, QLinearGlobalAveragePool, QGemm, and EfficientNet's QLinearSigmoid
    and QLinearMul), compiles to as many neurons as the float
    model: a grid from 0 after a conv or a sum is the ReLU (or ReLU6) the quantizer removed; after
    a sigmoid (EfficientNet's gates) it is none. (Its ANN is not compared with onnxruntime's here:
    in a deep random-init network the convolutions' float summation order flips an occasional
    rounding, which every later layer carries; per operator and on a small CNN it is compared
    in tests/formats/test_quantization.py.)"""
    import snncompiler as snnc
    from benchmarks.quantized import ort_quantize

    path = tmp_path / f"{arch}.onnx"
    x = export(arch, 17, path)
    calib = np.random.default_rng(0).standard_normal((16,) + x.shape[1:]).astype(np.float32)
    source = str(path)
    if quant_format == "QOperator":
        # onnxruntime's QOperator quantizer needs its pre-processing on these exports (without it,
        # it fails reading a bias); the float model compiled below stays the export itself
        from onnxruntime.quantization.shape_inference import quant_pre_process

        source = str(tmp_path / "pre.onnx")
        quant_pre_process(str(path), source)
    int8 = ort_quantize(source, str(tmp_path / "int8.onnx"), calib, batch=len(x), quant_format=quant_format)
    if quant_format == "QOperator":
        assert any(n.domain == "com.microsoft" for n in onnx.load(int8).graph.node)
    neurons = {}
    for label, model in (("float", str(path)), ("int8", int8)):
        compiled = snnc.compile(model, calib, timesteps=4)
        assert not compiled.graph.find("quantize") and not compiled.graph.find("dequantize")
        neurons[label] = len(compiled.graph.find("neuron"))
    assert neurons["int8"] == neurons["float"], neurons
