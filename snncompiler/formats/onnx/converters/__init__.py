"""One small converter per ONNX operator; importing this package registers them all."""

from . import activations, elementwise, layers, pooling, quantization, snn, structure  # noqa: F401
