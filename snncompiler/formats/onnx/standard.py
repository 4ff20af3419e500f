"""A compiled spiking model as standard ONNX for a fixed T (``snnc export --format onnx``).

The artifact's ``snncompiler::Neuron`` nodes need snnc's runtime; this writer spells the whole
simulation in standard operators, so onnxruntime (or any ONNX runtime) gives what
``snnc run --timesteps T`` gives:

* Every op that is not a neuron is written by the artifact writer's own rule (``WRITERS``). As
  in the spiking runtime, values constant over time (a directly encoded input and what is
  computed from it alone: the first layer's current) are computed once on [N, ...]; the rest
  runs on the time-flattened batch [T·N, ...], time-major (``Tile`` makes the transition).
* A neuron is a ``Scan`` over the T steps whose body is the kernels' update in their float32
  order: ``h = v + x`` (IF) or ``h = decay·v + x`` (LIF), ``s = h ≥ θ``, output θ·s, then
  ``v ← h − θ·s`` (soft reset) or ``v ← s ? 0 : h`` (hard reset); the initial membrane (θ/2 or 0,
  plus any potential-calibration offset) and the hard-reset input gain are constants.
* Max pooling: ``rate`` as the increments (``CumSum``, ``MaxPool``, a shifted ``Sub``) of the
  window's largest running spike count times θ; ``gated`` as a ``Gather`` of the spikes at the
  ``MaxPool`` indices of the running counts (ties to the first input, as the runtime breaks them);
  ``output`` and ``input`` as the per-step MaxPool.
* The graph output is the mean over the T steps (``CumSum`` and its last step divided by T, as the
  runtime accumulates it); an output that is not a float (a mask, an ArgMax index) is its value
  at the last step, as the runtime reports it.
* Analog islands (sigmoid, softmax, ...) run on the running mean of their inputs (``CumSum`` in
  double, rounded to float, divided by the step number) and emit the increments of t·f(mean), as the runtime does.
* Sequence inputs ([N, T_in, ...], one frame per step) are sliced to their first T frames.

Refused, naming the model: rate-encoded inputs (random per step) and graphs that run only one
sample at a time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import SnncError
from ...fileio import write_bytes
from ...ir import Graph, Node
from ...ir.neuron import NeuronSpec, binary_outputs, population_inverse, time_invariant
from ...ir.ops import broadcasts_constants, conversion_kind
from ...limits import check_timesteps
from ..artifact import TARGET_OPSET
from .writer import Builder, write_node


def _i64(values) -> np.ndarray:
    return np.array(values, np.int64)


def _channel_const(t, rank: int) -> np.ndarray:
    """A scalar or per-channel [C] parameter as float32 broadcasting over [N, C, ...] of ``rank``."""
    arr = t.detach().cpu().float().numpy()
    if arr.size == 1:
        return np.array(arr.reshape(()), np.float32)
    return arr.reshape([1, -1] + [1] * (rank - 2)).astype(np.float32)


class _Writer:
    """The standard-ONNX graph of one spiking model at one T."""

    def __init__(self, graph: Graph, options: dict, timesteps: int):
        self.graph, self.T = graph, int(timesteps)
        self.b = Builder(graph)
        self.sequence = options.get("encoding") == "sequence"
        self.static, self.constant = time_invariant(graph, self.sequence)
        self._tiled: dict[str, str] = {}
        self._n = 0

    # ---- helpers ------------------------------------------------------------------------
    def name(self, base: str) -> str:
        """A fresh value or node name derived from ``base``."""
        self._n += 1
        return f"{base}__std{self._n}"

    def const(self, base: str, value: np.ndarray) -> str:
        """Add ``value`` as a fresh initializer; return its name."""
        name = self.name(base)
        self.b.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def add(self, op: str, inputs, base: str, **attrs) -> str:
        """Append a one-output node with a fresh output name; return that name."""
        out = self.name(base)
        self.b.add(op, inputs, [out], out, **attrs)
        return out

    def sample_shape(self, value: str) -> list[int]:
        """The per-sample shape of the IR value ``value`` (from shape inference)."""
        shape = self.graph.shape(value)
        if shape is None:
            raise SnncError(f"export: the shape of '{value}' is unknown")
        return [int(d) for d in shape[1:]]

    def dynamic(self, value: str) -> str:
        """``value`` on the time-flattened batch [T·N, ...] (a static one tiled T times, once)."""
        if value not in self.static:
            return value
        if value not in self._tiled:
            reps = self.const(value, _i64([self.T] + [1] * len(self.sample_shape(value))))
            self._tiled[value] = self.add("Tile", [value, reps], value)
        return self._tiled[value]

    def to_steps(self, value: str, like: str) -> str:
        """[T·N, ...] → [T, N, ...] with the per-sample shape of the IR value ``like``."""
        return self.add("Reshape", [value, self.const(value, _i64([self.T, -1] + self.sample_shape(like)))], value)

    def from_steps(self, value: str, like: str, out: str | None = None) -> str:
        """[T, N, ...] → [T·N, ...] (written under ``out`` when given)."""
        shape = self.const(value, _i64([-1] + self.sample_shape(like)))
        if out is None:
            return self.add("Reshape", [value, shape], value)
        # a fresh node name: the value's own may be an IR node's name (an ONNX node named after its output)
        self.b.add("Reshape", [value, shape], [out], self.name(out))
        return out

    # ---- nodes --------------------------------------------------------------------------
    def write(self) -> onnx.ModelProto:
        """Every node in order (static, per-step, neuron, pooling, analog), then the mean outputs."""
        g = self.graph
        x_name = g.inputs[0].name
        feed = x_name
        if self.sequence:  # [N, T_in, ...] → the first T frames, time-major, flattened: [T·N, ...]
            frame = [int(d) for d in g.inputs[0].shape[1:]]  # the graph's input is one frame
            cut = self.add(
                "Slice",
                [
                    x_name,
                    self.const(x_name, _i64([0])),
                    self.const(x_name, _i64([self.T])),
                    self.const(x_name, _i64([1])),
                ],
                x_name,
            )
            steps = self.add("Transpose", [cut], x_name, perm=[1, 0] + list(range(2, len(frame) + 2)))
            feed = self.add("Reshape", [steps, self.const(x_name, _i64([-1] + frame))], x_name)
        rename = {x_name: feed}
        for node in g.nodes:
            ins = [rename.get(i, i) for i in node.inputs]
            if node.outputs and node.outputs[0] in self.static:
                write_node(self.b, _renamed(node, ins, node.outputs))
                continue
            if conversion_kind(node) == "analog":
                self.analog(node, ins)
                continue
            # a constant broadcasts over [T·N, ...] as it did over [N, ...]: not tiled
            unexpanded = self.constant if broadcasts_constants(node.op) else set()
            dyn = [i if i in unexpanded else self.dynamic(i) for i in ins]
            if node.op == "neuron":
                self.neuron(node, dyn[0])
            elif node.op == "maxpool" and node.attrs.get("spiking") == "rate":
                self.rate_maxpool(node, dyn[0])
            elif node.op == "maxpool" and node.attrs.get("spiking") == "gated" and not node.attrs.get("global"):
                self.gated_maxpool(node, dyn[0])
            else:
                write_node(self.b, _renamed(node, dyn, node.outputs))
        outputs = []
        for v in g.outputs:
            outputs.append(self.output(v.name))
        return self.model(outputs)

    def neuron(self, node: Node, x: str) -> None:
        """A Scan over the T steps of [T, N, ...] with the membrane as its state."""
        spec = NeuronSpec.from_attrs(node.attrs, where=node.where)
        p = node.params
        sample = self.sample_shape(node.inputs[0])
        rank = len(sample) + 1
        theta = _channel_const(p["theta"], rank)
        if "gain" in p:  # hard-reset compensation: the neuron integrates g·x
            x = self.add("Mul", [x, self.const(node.name + ".gain", _channel_const(p["gain"], rank))], x)
        seq = self.to_steps(x, node.inputs[0])
        # initial membrane [N, ...]: θ/2 or 0 (+ v_init), expanded to one step of the input
        v0 = theta * np.float32(0.5) if spec.v0 == "half" else np.zeros_like(theta)
        if "v_init" in p:
            v0 = (v0 + p["v_init"].detach().cpu().float().numpy()).astype(np.float32)
        first = self.add("Gather", [seq, self.const(node.name, np.array(0, np.int64))], node.name, axis=0)
        shape = self.add("Shape", [first], node.name)
        b = spec.population
        if b > 1:  # B staggered neurons per unit on a leading axis of the state (ir/neuron.py)
            v0 = v0 + spec.population_offsets(theta, rank).numpy()
            shape = self.add("Concat", [self.const(node.name + ".b", _i64([b])), shape], node.name, axis=0)
        v_init = self.add("Expand", [self.const(node.name + ".v0", v0.astype(np.float32)), shape], node.name)
        body = _neuron_body(self.name(node.name + "_step"), theta, spec)
        v_last, spikes = self.name(node.name + "_v"), self.name(node.name + "_s")
        self.b.add(
            "Scan", [v_init, seq], [v_last, spikes], self.name(node.name + "_scan"), body=body, num_scan_inputs=1
        )
        if b > 1:  # the unit's output as the runtime computes it: k spikes give k·(θ·float32(1/B))
            fired = self.add("Div", [spikes, self.const(node.name + ".theta", theta)], node.name)  # exactly 1 or 0
            k = self.add("ReduceSum", [fired, self.const(node.name + ".axis", _i64([1]))], node.name, keepdims=0)
            unit = (theta * np.float32(population_inverse(b))).astype(np.float32)
            spikes = self.add("Mul", [k, self.const(node.name + ".unit", unit)], node.name)
        self.from_steps(spikes, node.inputs[0], out=node.outputs[0])

    def _count(self, base: str, rank: int) -> str:
        """The step numbers 1..T as float32 [T, 1, ...] broadcasting over [T, N, ...] of ``rank``."""
        return self.const(base, np.arange(1, self.T + 1, dtype=np.float32).reshape([self.T] + [1] * (rank - 1)))

    def _increments(self, seq: str, base: str, rank: int) -> str:
        """x[t] − x[t−1] along axis 0 of [T, N, ...] (x[−1] = 0): Pad shifts it one step."""
        pads = self.const(base, _i64([1] + [0] * (rank - 1) + [-1] + [0] * (rank - 1)))
        return self.add("Sub", [seq, self.add("Pad", [seq, pads], base, mode="constant")], base)

    def analog(self, node: Node, ins: list[str]) -> None:
        """An analog island as the runtime runs it: its op on the running means of its inputs,
        emitting the increments of t·f(mean) so that its own running mean is f(mean so far); a
        mask or an index is passed on as it is."""
        axis0 = None  # made on first use: an island of constants and masks has no running sums
        means = []
        for name, value in zip(node.inputs, ins):
            if value in self.constant:  # its own mean, broadcasting over [T·N, ...] as over [N, ...]
                means.append(value)
                continue
            value = self.dynamic(value)
            if not self.graph.is_float(name):  # a mask from an island before: this step's value
                means.append(value)
                continue
            rank = len(self.sample_shape(name)) + 2
            seq = self.to_steps(value, name)
            axis0 = axis0 or self.const(node.name, np.array(0, np.int64))
            # summed in double and rounded per step, as the runtime's running sums (ties stay ties)
            wide = self.add("Cast", [seq], node.name, to=TensorProto.DOUBLE)
            cum = self.add("Cast", [self.add("CumSum", [wide, axis0], node.name)], node.name, to=TensorProto.FLOAT)
            means.append(self.from_steps(self.add("Div", [cum, self._count(node.name, rank)], node.name), name))
        # not a float (a comparison, an index): the output itself; a float: f, then its increments
        fs = [out if not self.graph.is_float(out) else self.name(node.name + "_f") for out in node.outputs]
        write_node(self.b, _renamed(node, means, fs))
        for out, f in zip(node.outputs, fs):
            if f != out:
                rank = len(self.sample_shape(out)) + 2
                total = self.add("Mul", [self.to_steps(f, out), self._count(node.name, rank)], node.name)
                self.from_steps(self._increments(total, node.name, rank), out, out=out)

    def gated_maxpool(self, node: Node, x: str) -> None:
        """Each window passes the spikes of its input with the highest running spike count, ties
        to the first input (a count plus −k/(plane+1) for the k-th position of the plane, as the
        runtime adds): MaxPool's Indices of the counts pick from the (padded) spikes by Gather."""
        from ...runtime.ops import _pool_out_size

        a = node.attrs
        sample = self.sample_shape(node.inputs[0])  # [C, *spatial]
        nd = len(sample) - 1
        kernel, stride = list(a["kernel"]), list(a.get("stride", [1] * nd))
        pads, dilation = list(a.get("pads", [0] * 2 * nd)), list(a.get("dilation", [1] * nd))
        ceil_mode = a.get("ceil_mode", 0)
        spatial = sample[1:]
        plane = int(np.prod(spatial))
        dtype, onnx_type = (
            (np.float32, TensorProto.FLOAT) if self.T * (plane + 1) < 2**23 else (np.float64, TensorProto.DOUBLE)
        )
        seq = self.to_steps(x, node.inputs[0])
        zero = self.const(node.name, np.array(0.0, np.float32))
        fired = self.add(
            "Cast", [self.add("Not", [self.add("Equal", [seq, zero], node.name)], node.name)], node.name, to=onnx_type
        )
        counts = self.from_steps(
            self.add("CumSum", [fired, self.const(node.name, np.array(0, np.int64))], node.name), node.inputs[0]
        )
        first_wins = (-np.arange(plane, dtype=dtype) / dtype(plane + 1)).astype(dtype).reshape(spatial)
        counts = self.add("Add", [counts, self.const(node.name, first_wins)], node.name)
        # pad as runtime.ops._windows does, so that a plain floor-mode pooling has ONNX's output size
        ends = []
        for i in range(nd):
            size = spatial[i]
            out = _pool_out_size(size, kernel[i], stride[i], pads[i], pads[nd + i], dilation[i], ceil_mode)
            need = (out - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1
            ends.append(pads[nd + i] + max(0, need - (size + pads[i] + pads[nd + i])))
        spikes = x
        if any(pads[:nd]) or any(ends):
            pad = self.const(node.name, _i64([0, 0] + list(pads[:nd]) + [0, 0] + ends))
            counts = self.add("Pad", [counts, pad, self.const(node.name, np.array(-np.inf, dtype))], node.name)
            spikes = self.add("Pad", [x, pad, zero], node.name)
        pooled, idx = self.name(node.name + "_max"), self.name(node.name + "_idx")
        self.b.add(
            "MaxPool",
            [counts],
            [pooled, idx],
            self.name(node.name),
            kernel_shape=kernel,
            strides=stride,
            dilations=dilation,
            pads=[0] * 2 * nd,
            ceil_mode=0,
        )
        flat = self.add("Reshape", [spikes, self.const(node.name, _i64([-1]))], node.name)
        self.b.add("Gather", [flat, idx], [node.outputs[0]], self.name(node.name), axis=0)

    def rate_maxpool(self, node: Node, x: str) -> None:
        """Increments of the window's largest running input sum; fed by a neuron, the sums are
        spike counts (exact in float32) times its θ, otherwise input values summed in float64."""
        src = self.graph.producer(node.inputs[0])
        fed_by_neuron = src is not None and src.op == "neuron" and binary_outputs(src)
        seq = self.to_steps(x, node.inputs[0])
        if fed_by_neuron:
            zero = self.const(node.name, np.array(0.0, np.float32))
            counts = self.add(
                "Cast",
                [self.add("Not", [self.add("Equal", [seq, zero], node.name)], node.name)],
                node.name,
                to=TensorProto.FLOAT,
            )
        else:
            counts = self.add("Cast", [seq], node.name, to=TensorProto.DOUBLE)
        axis0 = self.const(node.name, np.array(0, np.int64))
        sums = self.from_steps(self.add("CumSum", [counts, axis0], node.name), node.inputs[0])
        pooled = self.name(node.name + "_pool")
        write_node(self.b, _renamed(node, [sums], [pooled], name=self.name(node.name)))
        pooled = self.to_steps(pooled, node.outputs[0])
        rank = len(self.sample_shape(node.outputs[0])) + 2
        inc = self._increments(pooled, node.name, rank)
        if fed_by_neuron:
            theta = _channel_const(src.params["theta"], rank - 1)
            flat = self.from_steps(inc, node.outputs[0])
            self.b.add("Mul", [flat, self.const(node.name + ".theta", theta)], [node.outputs[0]], node.name)
        else:
            flat = self.from_steps(inc, node.outputs[0])
            self.b.add("Cast", [flat], [node.outputs[0]], node.name, to=TensorProto.FLOAT)

    def output(self, name: str) -> str:
        """The mean over T steps of a graph output, written under a new name (then renamed)."""
        if name in self.static:
            return name
        seq = self.to_steps(name, name)
        if not self.graph.is_float(name):  # a mask or an index: its value at step T
            out = self.name(name + "_last")
            self.b.add("Gather", [seq, self.const(name, np.array(self.T - 1, np.int64))], [out], out, axis=0)
            return out
        cums = self.add("CumSum", [seq, self.const(name, np.array(0, np.int64))], name)
        last = self.add("Gather", [cums, self.const(name, np.array(self.T - 1, np.int64))], name, axis=0)
        out = self.name(name + "_mean")
        self.b.add("Div", [last, self.const(name, np.array(self.T, np.float32))], [out], out)
        return out

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        """The ModelProto: the graph's input, its outputs (the means, under the graph's output names)."""
        g = self.graph
        x = g.inputs[0]
        in_shape = ["N"] + (["T_in"] if self.sequence else []) + [int(d) for d in x.shape[1:]]
        # the mean outputs keep the graph's output names: rename the internal values
        final = []
        for v, out in zip(g.outputs, outputs):
            if out != v.name:
                internal = self.name(v.name + "_steps")
                for n in self.b.nodes:
                    n.input[:] = [internal if i == v.name else i for i in n.input]
                    n.output[:] = [internal if o == v.name else o for o in n.output]
                    if n.output and n.output[0] == out:
                        n.output[0] = v.name
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(g.dtype(v.name)))
            final.append(helper.make_tensor_value_info(v.name, elem, ["N"] + [int(d) for d in g.shape(v.name)[1:]]))
        graph = helper.make_graph(
            self.b.nodes,
            g.name or "snn",
            [helper.make_tensor_value_info(x.name, TensorProto.FLOAT, in_shape)],
            final,
            initializer=self.b.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)], producer_name="snncompiler"
        )
        helper.set_model_props(
            model,
            {
                "snncompiler.export": "standard-onnx",
                "snncompiler.timesteps": str(self.T),
                "snncompiler.output": "mean over the timesteps (a mask or an index: its value at the last step)",
            },
        )
        return model


def _renamed(node: Node, inputs, outputs, name: str | None = None) -> Node:
    """``node`` reading ``inputs`` and writing ``outputs`` (its write rule names values by these),
    optionally under another node ``name``."""
    return Node(node.op, name or node.name, list(inputs), list(outputs), node.attrs, node.params, node.source)


def _neuron_body(prefix: str, theta: np.ndarray, spec: NeuronSpec) -> onnx.GraphProto:
    """The Scan body of one neuron step: (v, x) → (v', θ·s), in the kernels' float32 order. Its
    value names carry ``prefix``: names in a subgraph must not repeat the outer graph's."""
    from ...kernels.reference import f32

    def n(name: str) -> str:
        return f"{prefix}/{name}"

    decay = f32(spec.decay)
    nodes, inits = [], [numpy_helper.from_array(theta, n("theta"))]
    if decay == 1.0:
        nodes.append(helper.make_node("Add", [n("v"), n("x")], [n("h")]))
    else:
        inits.append(numpy_helper.from_array(np.array(decay, np.float32), n("decay")))
        nodes += [
            helper.make_node("Mul", [n("v"), n("decay")], [n("dv")]),
            helper.make_node("Add", [n("dv"), n("x")], [n("h")]),
        ]
    nodes += [
        helper.make_node("GreaterOrEqual", [n("h"), n("theta")], [n("fire")]),
        helper.make_node("Cast", [n("fire")], [n("s")], to=TensorProto.FLOAT),
        helper.make_node("Mul", [n("theta"), n("s")], [n("out")]),
    ]
    if spec.reset == "soft":
        nodes.append(helper.make_node("Sub", [n("h"), n("out")], [n("v_next")]))
    else:
        inits.append(numpy_helper.from_array(np.array(0.0, np.float32), n("zero")))
        nodes.append(helper.make_node("Where", [n("fire"), n("zero"), n("h")], [n("v_next")]))

    def vi(name: str):
        return helper.make_tensor_value_info(n(name), TensorProto.FLOAT, None)

    return helper.make_graph(nodes, prefix, [vi("v"), vi("x")], [vi("v_next"), vi("out")], initializer=inits)


def to_standard_onnx(compiled, timesteps: int | None = None) -> onnx.ModelProto:
    """A :class:`~snncompiler.model.CompiledModel` as standard ONNX simulating ``timesteps`` steps
    (default: its compile T) and returning the mean output over them (see the module docstring)."""
    from ...runtime.executor import fixed_batch, infer_shapes

    T = int(timesteps if timesteps is not None else compiled.options["timesteps"])
    if T < 1:
        raise SnncError(f"--timesteps: must be ≥ 1, got {T}")
    check_timesteps(T, "--timesteps")
    graph = compiled.graph
    where = graph.metadata.get("source_file", "model")
    if compiled.options.get("encoding") == "rate":
        raise SnncError(
            f"{where}: rate-encoded inputs are random at every step; standard-ONNX export needs "
            "direct (or sequence) encoding"
        )
    if fixed_batch(graph):
        raise SnncError(
            f"{where}: runs only one sample at a time (its batch axis is fixed in the graph), which "
            "the standard-ONNX export does not express"
        )
    if len(graph.inputs) != 1:
        raise SnncError(f"{where}: has {len(graph.inputs)} inputs; the export handles one")
    graph = infer_shapes(graph.copy())
    model = _Writer(graph, compiled.options, T).write()
    onnx.checker.check_model(model)
    return model


def save_standard_onnx(compiled, path, timesteps: int | None = None) -> None:
    """Write :func:`to_standard_onnx` to ``path`` (atomically)."""
    write_bytes(path, to_standard_onnx(compiled, timesteps).SerializeToString())
