"""IR (SNN) → NIR, the Neuromorphic Intermediate Representation read by neuromorphic hardware
toolchains and other SNN frameworks (SpikingJelly, snnTorch, Norse, Sinabs, Lava, ...).

NIR cannot say everything a compiled artifact says, so the export is lossy in known ways, each
reported as a warning and recorded in the graph's metadata:

* NIR neurons reset to ``v_reset`` (hard reset) and test ``v > v_threshold``; there is no
  reset by subtraction, which conversion relies on. A soft-reset model is exported with
  ``v_reset = 0`` and readers will run it with hard reset (SpikingJelly) or, in some, with
  subtraction (Sinabs imports every IF that way). Compile with ``--reset hard --v0 zero``
  for a file whose meaning does not depend on the reader.
* NIR has no initial membrane potential: v0 = θ/2 and potential-calibration offsets are lost.
* NIR is continuous-time and stores no time step: we write the discrete neuron with
  dt = 1e-4 s, as SpikingJelly and snnTorch do (IF: r = 1/dt; LIF: tau = τ·dt, r = τ,
  v_leak = 0, so one Euler step is exactly v ← (1 − 1/τ)·v + x).
* Our neurons output θ·s; NIR neurons output s. θ is folded into the weights of the layers
  that read the spikes (through Flatten and AvgPool, which commute with scaling), or into the
  next neuron's threshold, and only where that is impossible a ``Scale`` node carries it.
* Inputs: under direct encoding the same input is fed at every step; the prediction is the
  output averaged over time. Both are conventions the file cannot express (metadata says so).

Conventions some readers need instead of NIR's own (``to_nir(..., flatten=, avgpool=)``,
``snnc export --nir-flatten / --nir-avgpool``; the metadata records which were used):

* ``flatten="torch"``: NIR's Flatten works on one sample (start_dim 0), but snnTorch's and
  Norse's importers build ``torch.nn.Flatten(start_dim, end_dim)`` from it and run it on a
  batch, where start_dim 0 flattens the batch too. The torch convention writes start_dim 1 on
  a batched input_type [1, C, H, W].
* ``avgpool="sum"``: for readers without AvgPool2d (Norse maps only SumPool2d, and has no
  Scale either), average pooling is written as a SumPool2d whose 1/k² is folded into the layer
  that reads it, like θ (a ``Scale`` node only where nothing can absorb it).

Supported IR ops: conv (1-D/2-D), linear, neuron, flatten / flattening reshape, 2-D average
pooling, add of two activations (NIR sums the edges into a node), identity. Anything else is an
error naming the node.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import SnncError
from ...fileio import write_bytes
from ...ir import Graph, Node
from ...ir.neuron import NeuronSpec
from ...options import setting

log = logging.getLogger(__name__)

DT = 1e-4  # seconds per step: SpikingJelly's and snnTorch's NIR convention
#: Flatten conventions: NIR's (one sample, start_dim 0) or torch's (a batch, start_dim 1).
FLATTENS = ("nir", "torch")
#: How average pooling is written: AvgPool2d, or SumPool2d with 1/k² folded downstream.
AVGPOOLS = ("avg", "sum")


@dataclass
class _Source:
    """One contribution to a value: the NIR node that emits it and the factor its output must be
    multiplied by (θ of the neuron that spiked, carried until something can absorb it)."""

    node: str
    scale: torch.Tensor | None  # None: no factor; else broadcastable to the sample shape


def _nir():
    try:
        import nir
    except ImportError as exc:
        raise SnncError("NIR export needs the nir package (pip install 'snncompiler[nir]')") from exc
    return nir


def _ungrouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped conv's weight [Cout, Cin/g, ...] as the equal groups = 1 weight [Cout, Cin, ...]
    (zero outside each output channel's group). nir 1.0.8's conv nodes declare weight.shape[1]
    input channels, so a grouped (e.g. depthwise) conv's input type never matches its source and
    nir.read refuses the file; the dense form reads everywhere, at g times the weights."""
    cout, cpg = weight.shape[:2]
    dense = weight.new_zeros(cout, cpg * groups, *weight.shape[2:])
    for o in range(cout):
        g = o // (cout // groups)
        dense[o, g * cpg : (g + 1) * cpg] = weight[o]
    return dense


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32) if isinstance(t, torch.Tensor) else np.asarray(t, np.float32)


class _Exporter:
    def __init__(self, model, flatten: str = "nir", avgpool: str = "avg"):
        from ...runtime.executor import infer_shapes

        self.flatten, self.avgpool = flatten, avgpool
        self.nir = _nir()
        self.graph: Graph = model.graph
        infer_shapes(self.graph)
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []
        self.values: dict[str, list[_Source]] = {}
        self.warnings: list[str] = []

    def sample(self, value: str) -> tuple[int, ...]:
        return tuple(self.graph.shape(value)[1:])

    def add(self, name: str, node, sources: list[_Source]) -> str:
        # NIR writes node names as HDF5 group names: a '/' would nest groups
        name = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "node"
        while name in self.nodes:
            name += "_"
        self.nodes[name] = node
        self.edges += [(s.node, name) for s in sources]
        return name

    # ---- θ factors ------------------------------------------------------------------------
    def merged(self, node: Node, sources: list[_Source]) -> tuple[list[_Source], torch.Tensor | None]:
        """Sources whose common factor the consumer absorbs, and that factor; unequal factors
        (a residual add of two neurons with different θ) each get a Scale node."""
        scales = [s.scale for s in sources]
        if all(s is None for s in scales):
            return sources, None
        first = scales[0]
        if all(s is not None and s.shape == first.shape and torch.equal(s, first) for s in scales):
            return sources, first
        scaled = []
        for i, s in enumerate(sources):
            if s.scale is None:
                scaled.append(s)
                continue
            full = torch.broadcast_to(s.scale, self.sample(node.inputs[0]))
            name = self.add(f"{node.name}_scale{i}", self.nir.Scale(_np(full)), [s])
            scaled.append(_Source(name, None))
        return scaled, None

    @staticmethod
    def per_channel(scale: torch.Tensor | None, channels: int, where: str) -> torch.Tensor | None:
        """A factor as one value per channel (axis 0 of the sample), or None."""
        if scale is None:
            return None
        if scale.dim() == 0:
            return scale.expand(channels)
        flat = scale.reshape(scale.shape[0], -1)
        if flat.shape[1] != 1:
            raise SnncError(f"{where}: a θ that varies within a channel cannot be folded into the weights")
        return flat[:, 0].expand(channels)

    # ---- ops ------------------------------------------------------------------------------
    def run(self):
        nir = self.nir
        g = self.graph
        x = g.inputs[0].name
        self.values[x] = [
            _Source(self.add("input", nir.Input(input_type={"input": np.array(self.sample(x))}), []), None)
        ]
        for node in g.nodes:
            handler = getattr(self, f"op_{node.op}", None)
            if node.op == "maxpool":  # the most common case gets what to do, not only what is missing
                raise SnncError(
                    f"{node.where}: maxpool has no NIR equivalent (NIR has no max pooling node, and every "
                    "--maxpool strategy keeps one); use AvgPool in the ANN and recompile, or export with "
                    "--format onnx"
                )
            if handler is None:
                raise SnncError(
                    f"{node.where}: {node.op} has no NIR equivalent (NIR export supports conv, linear, "
                    "neurons, flatten, average pooling, add, sub, neg and products with a constant)"
                )
            ins = [self.values[i] for i in node.inputs]
            self.values[node.outputs[0]] = handler(node, *ins)
        out = g.outputs[0].name
        sources, scale = self.merged(g.nodes[-1], self.values[out])
        if scale is not None:  # the graph ends in a neuron: its spikes times θ are the output
            full = torch.broadcast_to(scale, self.sample(out))
            sources = [_Source(self.add("output_scale", nir.Scale(_np(full)), sources), None)]
        self.add("output", nir.Output(output_type={"output": np.array(self.sample(out))}), sources)

    def op_identity(self, node, ins):
        return ins

    def op_add(self, node, *ins):
        if len(ins) != 2:
            raise SnncError(f"{node.where}: adding a constant has no NIR equivalent (only sums of two activations)")
        return ins[0] + ins[1]  # NIR sums every edge that enters a node

    def op_neg(self, node, ins):
        # carried as a factor of −1: a layer absorbs it, and a neuron gets a Scale (see op_neuron)
        return [_Source(s.node, -(s.scale if s.scale is not None else torch.tensor(1.0))) for s in ins]

    def op_mul(self, node, ins):
        const = node.params.get("const")
        sample = self.sample(node.outputs[0])
        if const is None or self.sample(node.inputs[0]) != sample:
            raise SnncError(f"{node.where}: only a product with a constant of the activation's shape has a NIR form")
        const = const.float()
        if const.dim() > len(sample):  # a leading batch axis of 1 (ONNX broadcasting)
            const = const.reshape(const.shape[const.dim() - len(sample) :])
        # carried as a factor, as a neuron's θ is, until a layer absorbs it
        return [_Source(s.node, const if s.scale is None else s.scale * const) for s in ins]

    def op_sub(self, node, *ins):
        if len(ins) != 2:
            raise SnncError(
                f"{node.where}: subtracting a constant has no NIR equivalent (only differences of two activations)"
            )
        return ins[0] + self.op_neg(node, ins[1])

    def op_conv(self, node, ins):
        nir = self.nir
        w, b = node.params["weight"].float(), node.params.get("bias")
        nd = w.dim() - 2
        if nd not in (1, 2):
            raise SnncError(f"{node.where}: only 1-D and 2-D convolutions have a NIR node, this one is {nd}-D")
        pads = list(node.attrs.get("pads", [0] * 2 * nd))
        if pads[:nd] != pads[nd:]:
            raise SnncError(f"{node.where}: asymmetric padding {pads} has no NIR equivalent")
        sources, scale = self.merged(node, ins)
        groups = int(node.attrs.get("groups", 1))
        cin = self.sample(node.inputs[0])[0]
        s = self.per_channel(scale, cin, node.where)
        if s is not None:  # W[o, j] reads input channel (o // (Cout/g))·(Cin/g) + j
            cout, cpg = w.shape[0], w.shape[1]
            idx = (torch.arange(cout) // (cout // groups))[:, None] * cpg + torch.arange(cpg)[None, :]
            w = w * s[idx].reshape(cout, cpg, *([1] * nd))
        if groups > 1:
            w, groups = _ungrouped(w, groups), 1
        bias = b.float() if b is not None else torch.zeros(w.shape[0])
        stride = node.attrs.get("stride", [1] * nd)
        dilation = node.attrs.get("dilation", [1] * nd)
        spatial = self.sample(node.inputs[0])[1:]
        if nd == 1:
            conv = nir.Conv1d(
                input_shape=int(spatial[0]),
                weight=_np(w),
                stride=int(stride[0]),
                padding=int(pads[0]),
                dilation=int(dilation[0]),
                groups=groups,
                bias=_np(bias),
            )
        else:
            conv = nir.Conv2d(
                input_shape=tuple(int(d) for d in spatial),
                weight=_np(w),
                stride=tuple(stride),
                padding=tuple(pads[:2]),
                dilation=tuple(dilation),
                groups=groups,
                bias=_np(bias),
            )
        return [_Source(self.add(node.name, conv, sources), None)]

    def op_linear(self, node, ins):
        sample = self.sample(node.inputs[0])
        if len(sample) != 1:
            raise SnncError(f"{node.where}: a linear layer over a {len(sample)}-D sample has no NIR Affine equivalent")
        sources, scale = self.merged(node, ins)
        w = node.params["weight"].float()
        if scale is not None:
            w = w * torch.broadcast_to(scale, sample)[None, :]
        b = node.params.get("bias")
        bias = b.float() if b is not None else torch.zeros(w.shape[0])
        return [_Source(self.add(node.name, self.nir.Affine(weight=_np(w), bias=_np(bias)), sources), None)]

    def op_flatten(self, node, ins):
        if node.attrs.get("axis", 1) != 1:
            raise SnncError(f"{node.where}: only flattening from axis 1 has a NIR equivalent")
        return self._flatten(node, ins)

    def op_reshape(self, node, ins):
        sample, target = self.sample(node.inputs[0]), self.sample(node.outputs[0])
        if len(sample) == 1 and target == sample:
            return ins
        if target != (int(np.prod(sample)),):
            raise SnncError(f"{node.where}: a reshape to {list(target)} (not a flatten) has no NIR equivalent")
        return self._flatten(node, ins)

    def _flatten(self, node, ins):
        sample = self.sample(node.inputs[0])
        sources, scale = self.merged(node, ins)
        if scale is not None and scale.dim() > 0:
            scale = torch.broadcast_to(scale, sample).reshape(-1).clone()
        if self.flatten == "torch":  # readers that run torch.nn.Flatten(start_dim, end_dim) on a batch
            flat = self.nir.Flatten(input_type={"input": np.array((1, *sample))}, start_dim=1, end_dim=-1)
        else:
            flat = self.nir.Flatten(input_type={"input": np.array(sample)}, start_dim=0, end_dim=-1)
        return [_Source(self.add(node.name, flat, sources), scale)]

    def op_avgpool(self, node, ins):
        sample = self.sample(node.inputs[0])
        if len(sample) != 3:
            raise SnncError(f"{node.where}: only 2-D average pooling has a NIR node")
        if node.attrs.get("global"):
            kernel, stride, pads = list(sample[1:]), list(sample[1:]), [0, 0, 0, 0]
        else:
            kernel = list(node.attrs["kernel"])
            stride = list(node.attrs.get("stride", [1, 1]))
            pads = list(node.attrs.get("pads", [0] * 4))
            if node.attrs.get("ceil_mode", 0):
                raise SnncError(f"{node.where}: ceil_mode pooling has no NIR equivalent")
            if any(pads) and (pads[:2] != pads[2:] or not node.attrs.get("count_include_pad", 0)):
                raise SnncError(
                    f"{node.where}: padded average pooling must be symmetric and count the padding "
                    "(count_include_pad=1) to match NIR's AvgPool2d"
                )
        sources, scale = self.merged(node, ins)
        if scale is not None and scale.dim() > 0:
            scale = self.per_channel(scale, sample[0], node.where).reshape(-1, 1, 1)
        args = {"kernel_size": np.array(kernel), "stride": np.array(stride), "padding": np.array(pads[:2])}
        if self.avgpool == "sum":  # the average is the sum times 1/k², a factor carried like θ
            area = torch.tensor(1.0 / float(np.prod(kernel)))
            scale = area if scale is None else scale * area
            return [_Source(self.add(node.name, self.nir.SumPool2d(**args), sources), scale)]
        return [_Source(self.add(node.name, self.nir.AvgPool2d(**args), sources), scale)]

    def op_neuron(self, node, ins):
        sample = self.sample(node.inputs[0])
        sources, scale = self.merged(node, ins)
        if scale is not None and bool((scale <= 0).any()):  # only a positive factor moves into θ
            full = torch.broadcast_to(scale, sample)
            sources, scale = (
                [_Source(self.add(f"{node.name}_input_scale", self.nir.Scale(_np(full)), sources), None)],
                None,
            )
        theta = node.params["theta"].float()
        th = theta.reshape(-1, *([1] * (len(sample) - 1))) if theta.numel() > 1 else theta.reshape(())
        # spikes of neuron(a·x, θ) are those of neuron(x, θ/a): an unabsorbed factor on the input
        # current moves into the threshold
        fire_at = th
        if "gain" in node.params:  # hard-reset compensation: a gain g on the input current fires at θ/g
            gain = node.params["gain"].float()
            fire_at = th / (gain.reshape(-1, *([1] * (len(sample) - 1))) if gain.numel() > 1 else gain.reshape(()))
        threshold = torch.broadcast_to(fire_at / scale if scale is not None else fire_at, sample)
        spec = NeuronSpec.from_attrs(node.attrs, where=node.where)
        if spec.population > 1:  # NIR's IF and LIF are one neuron per unit with no initial membrane
            raise SnncError(
                f"{node.where}: population {spec.population} has no NIR form (NIR neurons have one initial "
                "membrane each and no averaging of neurons); compile with --population 1 to export NIR"
            )
        hard = spec.reset == "hard"
        v_reset = node.attrs.get("v_reset", 0.0) if hard else 0.0
        ones = np.ones(sample, np.float32)
        if spec.neuron == "lif":
            tau = spec.tau_of_decay(spec.decay)
            neuron = self.nir.LIF(
                tau=ones * tau * DT, r=ones * tau, v_leak=ones * 0.0, v_threshold=_np(threshold), v_reset=ones * v_reset
            )
        else:
            neuron = self.nir.IF(r=ones / DT, v_threshold=_np(threshold), v_reset=ones * v_reset)
        if "v_init" in node.params:
            self._warn("potential calibration's initial potentials (v_init) have no NIR field and are dropped")
        return [_Source(self.add(node.name, neuron, sources), th)]

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def _check_conventions(flatten: str, avgpool: str) -> None:
    if flatten not in FLATTENS:
        raise SnncError(f"flatten: expected one of {', '.join(FLATTENS)}, got {flatten!r}")
    if avgpool not in AVGPOOLS:
        raise SnncError(f"avgpool: expected one of {', '.join(AVGPOOLS)}, got {avgpool!r}")


def to_nir(model, *, flatten: str = "nir", avgpool: str = "avg") -> tuple[object, list[str]]:
    """Build a ``nir.NIRGraph`` from a compiled model; returns (graph, warnings about what NIR
    cannot represent). The warnings are also in the graph's metadata. ``flatten="torch"`` and
    ``avgpool="sum"`` write the conventions snnTorch's and Norse's importers need (see the module
    docstring); the defaults write NIR's own."""
    _check_conventions(flatten, avgpool)
    ex = _Exporter(model, flatten, avgpool)
    ex.run()
    reset, v0 = setting(model.options, "reset"), setting(model.options, "v0")
    if reset == "soft":
        ex._warn(
            "NIR has no soft reset (reset by subtraction): the neurons are written with v_reset = 0, which "
            "SpikingJelly runs as a hard reset (compile with --reset hard --v0 zero for a faithful file; "
            "add --calibration light for the accuracy at T <= 8, see README 'Hard reset')"
        )
    if v0 == "half":
        ex._warn(
            "NIR has no initial membrane potential: v0 = θ/2 is dropped (readers start at 0; "
            "compile with --v0 zero for a faithful file)"
        )
    encoding = setting(model.options, "encoding")
    metadata = {
        "producer": "snncompiler",
        "dt": DT,
        "reset": reset,
        "v0": v0,
        "threshold_test": ">= (NIR specifies >; SpikingJelly uses >=)",
        "encoding": encoding,
        "input": "the same input at every step" if encoding == "direct" else encoding,
        "readout": "mean of the output over time steps",
        "timesteps": int(setting(model.options, "timesteps")),
        "lossy": json.dumps(ex.warnings),
        "flatten": flatten,
        "avgpool": avgpool,
    }
    graph = ex.nir.NIRGraph(nodes=ex.nodes, edges=ex.edges, metadata=metadata, type_check=False)
    return graph, ex.warnings


def save_nir(model, path, *, flatten: str = "nir", avgpool: str = "avg") -> list[str]:
    """Write a compiled model as a NIR file (HDF5); returns the lossy-export warnings (also logged).
    ``flatten`` and ``avgpool`` as in :func:`to_nir`."""
    graph, warnings = to_nir(model, flatten=flatten, avgpool=avgpool)
    nir = _nir()
    buffer = io.BytesIO()  # serialised in memory, then written atomically like every other output
    nir.write(buffer, graph)
    write_bytes(path, buffer.getvalue())
    for w in warnings:
        log.warning("NIR export: %s", w)
    return warnings
