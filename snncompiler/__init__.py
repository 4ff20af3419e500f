"""snncompiler: compile trained ANNs (ONNX) into spiking neural networks.

import snncompiler as snnc
model = snnc.load("model.onnx")      # a callable over numpy arrays or tensors
y = model(x)
"""

from __future__ import annotations

from ._version import __version__
from .errors import SnncError
from .ir import Graph, Node, Value


def load_graph(path, *, lenient: bool = False) -> Graph:
    """Read an ONNX model into the IR (see :func:`snncompiler.formats.onnx.load_graph`)."""
    from .formats.onnx import load_graph as _load

    return _load(path, lenient=lenient)


def load(path, *, device: str = "cpu", dt: float | None = None):
    """Load a model: a compiled artifact or a NIR file gives a :class:`CompiledModel`, a plain
    ONNX ANN a callable.

    The ANN callable takes numpy arrays or tensors of any batch size and returns the same kind.
    ``dt`` is the time step of a NIR file that does not record one (see
    :mod:`snncompiler.formats.nir.reader`).
    """
    from .model import load as _load

    return _load(path, device=device, dt=dt)


def compile(model, calib_data, *, finetune: int | None = None, finetune_lr: float | None = None, **options):
    """Compile an ANN into a spiking model (see :func:`snncompiler.compiler.compile`).

    With ``finetune=EPOCHS`` (labelled ``calib_data``) conversion, calibration and fine-tuning
    run at ``timesteps`` as one pipeline, each stage kept only if it raises held-out accuracy
    (see :mod:`snncompiler.train.pipeline`); ``finetune_lr`` is that fine-tuning's learning rate
    (default :data:`~snncompiler.options.FINETUNE_LR`, as for :func:`snncompiler.train.finetune`;
    ``snnc compile --lr``). It has its own name because ``lr`` among ``options`` is weight
    calibration's step size (in the pipeline, ``lr`` also sets fine-tuning's, as it always has).
    ``distill`` (a weight in [0, 1], with ``finetune``) distils the ANN into the SNN while it
    fine-tunes (:func:`snncompiler.train.fit`'s ``teacher``)."""
    if finetune is not None:
        from .train.pipeline import compile_and_finetune

        if finetune_lr is not None:
            options["lr"] = finetune_lr
        return compile_and_finetune(model, calib_data, finetune=finetune, **options)
    if finetune_lr is not None:  # silently ignoring it would hide a forgotten finetune=EPOCHS
        from .errors import OptionError

        raise OptionError("finetune_lr", "is the fine-tuning learning rate and needs finetune=EPOCHS")
    if "distill" in options:
        from .errors import OptionError

        raise OptionError("distill", "distils the ANN during fine-tuning and needs finetune=EPOCHS")
    from .compiler import compile as _compile

    return _compile(model, calib_data, **options)


def calibrate(model_or_path, data, **options):
    """Layer-wise calibration (see :func:`snncompiler.compiler.calibrate`)."""
    from .compiler import calibrate as _calibrate

    return _calibrate(model_or_path, data, **options)


def __getattr__(name: str):
    # `snnc.train` without importing torch.nn training code for every CLI call
    if name == "train":
        import importlib

        return importlib.import_module(".train", __name__)
    raise AttributeError(f"module 'snncompiler' has no attribute {name!r}")


__all__ = ["train", "load", "compile", "calibrate", "load_graph", "Graph", "Node", "Value", "SnncError", "__version__"]
