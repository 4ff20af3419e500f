"""A directly trained network → the same artifact conversion emits (ONNX with snncompiler::Neuron nodes).

The network goes through the ONNX door like any ANN: a copy is exported with torch.onnx in
which each LIF is a ``Clip(0, 2^20 + i)``. The marker i identifies the LIF whatever names the
exporter gives its nodes, and Clip(0, c) is already the frontend's spelling of a neuron site.
The frontend lowers the file to the IR, BatchNorm is folded as in conversion, and each marked
clip becomes a neuron node carrying that LIF's settings and threshold. The runtime then runs
the trained network exactly as it ran in training: same kernel op, per-step max pooling (what
a trained network saw), mean output over the steps.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import SnncError
from .neuron import neurons

#: Clip maxima at and above this mark LIF sites; 2^20 + i is exact in float32 for i < 2^23.
_MARK = float(2**20)


class _Site(nn.Module):
    """Stands in for LIF ``index`` during ONNX export."""

    def __init__(self, index: int):
        super().__init__()
        self.bound = _MARK + index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, self.bound)


def _replace(root: nn.Module, qualified: str, new: nn.Module) -> None:
    parent, _, leaf = qualified.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def to_compiled(model: nn.Module, input_shape, *, timesteps: int | None = None, sequence: bool | None = None):
    """The trained network as a :class:`~snncompiler.model.CompiledModel` (IR + settings).

    ``input_shape`` is one sample's shape without the batch axis, e.g. (1, 8, 8); for a network
    that takes sequences, one frame's shape. ``timesteps`` is the artifact's default T and
    ``sequence`` its input encoding (both default to how :func:`~.trainer.fit` trained it).
    """
    from ..formats.onnx import load_graph
    from ..formats.onnx.from_torch import export_onnx
    from ..ir.neuron import ATTRIBUTES
    from ..model import CompiledModel
    from ..options import DEFAULTS
    from ..passes import PassContext, fold_bn, run_pipeline

    lifs = neurons(model)
    if not lifs:
        raise SnncError("model: has no snncompiler.train.LIF neuron; compile an ANN with snnc.compile instead")
    training = getattr(model, "_snnc_training", None)
    if timesteps is None:
        timesteps = (training or {}).get("timesteps")
        if timesteps is None:
            raise SnncError("timesteps: give the artifact's default T (the model was not trained with snnc.train.fit)")
    sequence = bool((training or {}).get("sequence", False)) if sequence is None else bool(sequence)
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise SnncError(f"timesteps: must be a positive integer, got {timesteps!r}")
    if model.training:
        raise SnncError(
            "model: is in training mode; call model.eval() first (BatchNorm must use its running statistics)"
        )
    net = copy.deepcopy(model).cpu()
    for index, (name, _) in enumerate(lifs):
        _replace(net, name, _Site(index))
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise SnncError(
            f"input_shape: expected one sample's shape as integers, e.g. (1, 8, 8), got {input_shape!r}"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = export_onnx(net, shape, Path(tmp) / "trained.onnx")
        except Exception as exc:  # torch's exporter raises many kinds; the first line says what failed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SnncError(f"input_shape {list(shape)}: exporting the network failed: {first}") from exc
        graph = load_graph(path)
    ctx = PassContext(options={})
    graph = run_pipeline(graph, ctx, [fold_bn])
    found = {}
    for node in graph.find("clip"):
        high = node.attrs.get("max")
        if node.attrs.get("min") == 0.0 and high is not None and high >= _MARK and (high - _MARK) < len(lifs):
            name, lif = lifs[int(high - _MARK)]
            theta = lif.threshold()
            if not bool((theta > 0).all()):
                raise SnncError(
                    f"model: LIF '{name}' has a threshold ≤ 0 (min {float(theta.min()):g}); a trained "
                    "θ must stay positive (lower the learning rate or keep θ fixed)"
                )
            node.op = "neuron"
            node.params = {"theta": theta}
            node.attrs = dict(lif.attrs, theta_source=f"trained: {name}")
            # messages name the module, not the marker; a LIF called at several sites gets #2, #3, ...
            base = "/" + name.replace(".", "/") + "/LIF"
            sites = found.setdefault(name, [])
            node.name = base if not sites else f"{base}#{len(sites) + 1}"
            sites.append(node.name)
    missing = [name for name, _ in lifs if name not in found]
    if missing:
        raise SnncError(
            f"model: LIF {', '.join(repr(m) for m in missing)} is not on the forward path, "
            "so the artifact cannot place it; remove it or use it"
        )
    for pool in graph.find("maxpool"):
        pool.attrs["spiking"] = "output"  # training took the max of the spikes at each step
    graph.validate()
    first = lifs[0][1].attrs
    mixed = any(m.attrs != first for _, m in lifs)
    options = {
        **DEFAULTS,
        **{k: first[k] for k in ATTRIBUTES if k in first},  # population only when above 1: DEFAULTS has 1
        "timesteps": timesteps,
        "threshold": "trained",
        "maxpool": "output",
        "encoding": "sequence" if sequence else "direct",
        "calibration": "none",
    }
    report = {
        "direct_training": training or {"method": "unknown"},
        "neurons": found,
        "neuron_settings": "per neuron (mixed)" if mixed else "uniform",
        "fold_bn": ctx.report.get("fold_bn", []),
    }
    return CompiledModel(graph, options, report)


def export(model: nn.Module, path, input_shape, *, timesteps: int | None = None, sequence: bool | None = None):
    """Write the trained network as a spiking artifact at ``path``; returns the CompiledModel.

    The file is what ``snnc compile`` writes: ``snnc run/eval/inspect`` and ``snnc.load`` read it.
    """
    compiled = to_compiled(model, input_shape, timesteps=timesteps, sequence=sequence)
    compiled.save(path)
    return compiled
