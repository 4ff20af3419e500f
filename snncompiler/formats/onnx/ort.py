"""onnxruntime as the ANN oracle: the engine behind `snnc eval` on plain ONNX files."""

from __future__ import annotations

import numpy as np

from ...errors import SnncError
from .reader import read_model


class OrtModel:
    """A callable around an onnxruntime session with snnc's input checks and batch handling.

    Models exported with a fixed batch size are fed in chunks of that size.
    """

    def __init__(self, path):
        import onnx
        import onnxruntime as ort

        model, label = read_model(path)
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise SnncError(f"{label}: fails the ONNX checker: {str(exc).splitlines()[0][:300]}") from exc
        self.label = label
        # onnxruntime logs a failing node in colour on stderr before raising; the raised error
        # becomes snnc's one line, so its logger is silenced (4 = fatal only, which it never logs here)
        ort.set_default_logger_severity(4)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        serialized = model.SerializeToString()
        try:
            self.session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            # onnxruntime's own optimiser can break a valid model: it fuses a 4-bit QDQ conv
            # (what its quantizer writes with QuantType.QUInt4) into a QLinearConv it has no
            # 4-bit kernel for. Unoptimised, the model runs as written.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                self.session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
            except Exception:
                raise SnncError(f"{label}: onnxruntime cannot load the model: {_ort_message(exc)}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise SnncError(f"{label}: expected a model with one input, found {len(inputs)}")
        self.input = inputs[0]
        dims = self.input.shape
        self.fixed_batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
        self.sample_shape = [d if isinstance(d, int) else None for d in dims[1:]]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.sample_shape) + 1 or any(
            w is not None and w != g for w, g in zip(self.sample_shape, x.shape[1:])
        ):
            want = ", ".join("?" if d is None else str(d) for d in self.sample_shape)
            raise SnncError(f"{self.label}: input '{self.input.name}' expects shape [N, {want}], got {list(x.shape)}")
        step = self.fixed_batch or len(x)
        outs = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            if self.fixed_batch and len(chunk) < step:  # pad the last chunk to the fixed batch size
                padded = np.concatenate([chunk, np.zeros((step - len(chunk),) + chunk.shape[1:], np.float32)])
                outs.append(self._run(padded)[: len(chunk)])
            else:
                outs.append(self._run(chunk))
        return np.concatenate(outs, axis=0)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The first output on one batch; a failure inside onnxruntime (a node that loads but
        cannot run, e.g. Conv with a wrong group) is a one-line error naming the file."""
        try:
            return self.session.run(None, {self.input.name: x}, self.run_options)[0]
        except MemoryError:
            raise SnncError(f"{self.label}: onnxruntime ran out of memory running the model") from None
        except Exception as exc:  # onnxruntime's Fail, InvalidArgument, RuntimeException ...
            raise SnncError(f"{self.label}: onnxruntime cannot run the model: {_ort_message(exc)}") from exc


def _ort_message(exc: BaseException) -> str:
    """The informative part of an onnxruntime error: the node and its status message, without the
    C++ source location."""
    import re

    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/onnxruntime_src/\S+ [^.]*? const ", "", text)
    return text[:300] or type(exc).__name__
