"""NIR → IR: run spiking networks written by other frameworks (SpikingJelly, snnTorch, Sinabs,
Norse, ... or `snnc export`) on snncompiler's runtime and kernels.

NIR neurons are continuous-time; one Euler step of length dt is what every discrete simulator
runs, so the file is read as:

* IF: v ← v + r·dt·I; LIF: v ← (1 − dt/τ)·v + (dt/τ)·r·I (v_leak must be 0), spike when v
  crosses v_threshold, then v ← v_reset (which must be 0: the kernels reset to 0).
  The input gain g = r·dt (IF) or r·dt/τ (LIF) moves into the threshold, θ = v_threshold / g,
  which gives the same spikes; a ``mul`` by 1/θ after the neuron turns snnc's θ·s output back
  into NIR's spikes of 1.
* dt: the file's ``dt`` metadata (written by `snnc export`), else the ``dt`` argument, else
  1e-4 s when every IF has r = 1/1e-4 (SpikingJelly's and snnTorch's convention) or, with no IF,
  every LIF has r = tau/1e-4 (snnTorch's LIF export), else 1 when
  every r is 1 (Sinabs'); anything else asks for ``dt``.
* Membranes start at 0 (NIR stores no initial state); the threshold test is snnc's ``>=``
  (NIR says ``>``; the two differ only when v lands exactly on θ).
* Several edges into one node are summed (``add`` nodes), as NIR specifies.
* Flatten: NIR's start_dim 0 on a sample, or torch's start_dim 1 on a batch when the file says
  so (``snnc export --nir-flatten torch``) or its input_type is the sample with a batch axis of 1.
* A file NIR's own type check refuses is read without it; snnc infers and checks the shapes.

Supported nodes: Input, Output, Affine, Linear, Conv1d, Conv2d, Flatten, AvgPool2d, SumPool2d,
Scale, IF, LIF. Others (CubaLIF, LI, Integrator, Delay, Threshold, recurrent graphs) are an
error naming the node.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import numpy as np
import torch

from ...errors import SnncError
from ...fileio import open_regular
from ...ir import Graph, Node, Value, check_finite_parameters
from ...ir.neuron import RESETS, V0S, NeuronSpec
from ...limits import check_timesteps

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CONVENTIONAL_DT = 1e-4


def is_nir_file(path) -> bool:
    """Whether ``path`` is an HDF5 file (how NIR is stored) rather than ONNX."""
    try:
        with open_regular(path) as f:
            return f.read(8) == HDF5_MAGIC
    except (OSError, SnncError):  # not a readable file: the ONNX reader says what it is
        return False


def _tensor(value) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


def _uniform(value, sample_shape, what: str, where: str) -> torch.Tensor:
    """A per-neuron NIR array as a scalar or one value per channel (axis 0), as snnc stores θ."""
    t = torch.broadcast_to(_tensor(value), tuple(sample_shape)) if sample_shape else _tensor(value)
    flat = t.reshape(-1)
    if bool((flat == flat[0]).all()):
        return flat[0].clone()
    per_channel = t.reshape(t.shape[0], -1)
    if sample_shape and bool((per_channel == per_channel[:, :1]).all()):  # 1-D: one value per feature
        return per_channel[:, 0].clone()
    raise SnncError(f"{where}: {what} varies within a channel; snnc supports one value per layer or per channel")


class _Importer:
    def __init__(self, graph, label: str, dt: float | None):
        self.nir_graph, self.label = graph, label
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.out_of: dict[str, str] = {}  # NIR node → IR value holding its output
        self.dt = self._dt(dt)
        self.reset, self.v0 = self._neuron_conventions()

    def where(self, name: str, node) -> str:
        return f"{self.label}: NIR node '{name}' ({type(node).__name__})"

    def _neuron_conventions(self) -> tuple[str, str]:
        """Reset and initial potential: NIR's own (reset to v_reset, start at 0) unless the file records
        snnc's (``reset``/``v0`` metadata, written by `snnc export`): a soft-reset, θ/2-start model
        then reads back as it was written instead of as a different network."""
        meta = getattr(self.nir_graph, "metadata", None) or {}
        if meta.get("producer") != "snncompiler":  # another tool's words for these may differ: NIR's own
            return "hard", "zero"
        reset, v0 = meta.get("reset", "hard"), meta.get("v0", "zero")
        if reset not in RESETS:
            raise SnncError(f"{self.label}: metadata 'reset' must be one of {', '.join(RESETS)}, got {reset!r}")
        if v0 not in V0S:
            raise SnncError(f"{self.label}: metadata 'v0' must be one of {', '.join(V0S)}, got {v0!r}")
        return str(reset), str(v0)

    def _dt(self, dt: float | None) -> float:
        meta = getattr(self.nir_graph, "metadata", None) or {}
        if "dt" in meta:
            try:
                value = float(meta["dt"])
            except (TypeError, ValueError):
                value = float("nan")
            if not (np.isfinite(value) and value > 0):
                raise SnncError(f"{self.label}: metadata 'dt' must be a finite number > 0, got {meta['dt']!r}")
            return value
        if dt is not None:
            if not (np.isfinite(dt) and dt > 0):
                raise SnncError(f"--dt: dt must be a finite number > 0, got {dt}")
            return float(dt)
        rs = [np.asarray(n.r, np.float64) for n in self.nir_graph.nodes.values() if type(n).__name__ == "IF"]
        if rs and all(np.allclose(r, 1.0 / CONVENTIONAL_DT) for r in rs):
            return CONVENTIONAL_DT
        # snnTorch writes LIF only, with r = tau/dt for its fixed dt = 1e-4 (as `snnc export` does)
        lifs = [n for n in self.nir_graph.nodes.values() if type(n).__name__ == "LIF"]
        if not rs and lifs and all(_conventional_lif(n) for n in lifs):
            return CONVENTIONAL_DT
        neurons = [n for n in self.nir_graph.nodes.values() if type(n).__name__ in ("IF", "LIF")]
        if neurons and all(np.allclose(np.asarray(n.r, np.float64), 1.0) for n in neurons):
            return 1.0
        raise SnncError(
            f"{self.label}: the file does not say its time step; pass --dt (snnc.load(..., dt=)), e.g. 1e-4 for "
            "SpikingJelly and snnTorch exports, 1 for Sinabs"
        )

    def emit(self, op: str, name: str, inputs: list[str], shape, attrs=None, params=None, source="") -> str:
        out = f"{name}:{op}" if any(n.name == name for n in self.nodes) else name
        origin = source or name
        kind = type(self.nir_graph.nodes[origin]).__name__ if origin in self.nir_graph.nodes else op
        self.nodes.append(
            Node(op, out, list(inputs), [out], dict(attrs or {}), dict(params or {}), f"NIR {kind} '{origin}'")
        )
        self.values[out] = Value(out, (1,) + tuple(shape))  # axis 0: the batch, 1 as in ONNX-read graphs
        return out

    def shape_of(self, value: str) -> tuple[int, ...]:
        return tuple(self.values[value].shape[1:])

    def run(self) -> Graph:
        g = self.nir_graph
        preds: dict[str, list[str]] = {name: [] for name in g.nodes}
        for src, dst in g.edges:
            if src not in g.nodes or dst not in g.nodes:
                raise SnncError(f"{self.label}: edge ({src!r}, {dst!r}) names a node that is not in the graph")
            preds[dst].append(src)
        try:
            order = list(TopologicalSorter(preds).static_order())
        except CycleError:
            raise SnncError(
                f"{self.label}: the NIR graph is recurrent (has a cycle); snnc runs feed-forward graphs only"
            ) from None
        inputs, outputs = [], []
        for name in order:
            node = g.nodes[name]
            kind = type(node).__name__
            if kind == "Input":
                spec = node.input_type.get("input") if isinstance(node.input_type, dict) else None
                try:
                    shape = tuple(int(d) for d in np.asarray(spec).reshape(-1)) if spec is not None else ()
                except (TypeError, ValueError, OverflowError):
                    shape = ()
                if not shape or min(shape) < 1:
                    raise SnncError(
                        f"{self.where(name, node)}: input_type['input'] is not a shape of positive "
                        f"sizes (got {spec!r:.60})"
                    )
                value = Value(name, (1,) + shape)
                self.values[name] = value
                inputs.append(value)
                self.out_of[name] = name
                continue
            if not preds[name]:
                raise SnncError(f"{self.where(name, node)}: has no input edge")
            dead = [p for p in preds[name] if p not in self.out_of]
            if dead:
                raise SnncError(
                    f"{self.where(name, node)}: reads node {dead[0]!r}, which has no output "
                    f"(a {type(g.nodes[dead[0]]).__name__} node)"
                )
            x = self.out_of[preds[name][0]]
            for k, other in enumerate(preds[name][1:], 1):  # NIR sums every edge into a node
                x = self.emit("add", f"{name}_in{k}", [x, self.out_of[other]], self.shape_of(x), source=name)
            if kind == "Output":
                outputs.append(self.values[x])
                continue
            handler = getattr(self, f"op_{kind}", None)
            if handler is None:
                raise SnncError(
                    f"{self.where(name, node)}: not supported (snnc reads Affine, Linear, Conv1d, "
                    "Conv2d, Flatten, AvgPool2d, SumPool2d, Scale, IF and LIF)"
                )
            try:
                self.out_of[name] = handler(name, node, x)
            except SnncError:
                raise
            except (ValueError, TypeError, IndexError, KeyError, RuntimeError, OverflowError) as exc:
                # parameters of shapes or types that do not fit the node (a damaged or foreign file)
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SnncError(f"{self.where(name, node)}: its parameters do not fit the node ({first})") from None
        if len(inputs) != 1 or len(outputs) != 1:
            raise SnncError(
                f"{self.label}: expected one Input and one Output node, found {len(inputs)} and {len(outputs)}"
            )
        graph = Graph(inputs, outputs, self.nodes, dict(self.values), name=Path(self.label).stem)
        check_finite_parameters(graph, self.label)
        from ...runtime.executor import infer_shapes

        infer_shapes(graph)  # also checks that every node accepts its input's shape
        return graph

    # ---- nodes ------------------------------------------------------------------------
    def op_Affine(self, name, node, x):
        w = _tensor(node.weight)
        return self.emit("linear", name, [x], (w.shape[0],), params={"weight": w, "bias": _tensor(node.bias)})

    def op_Linear(self, name, node, x):
        w = _tensor(node.weight)
        return self.emit("linear", name, [x], (w.shape[0],), params={"weight": w})

    def _conv(self, name, node, x, nd):
        w = _tensor(node.weight)
        pad = node.padding
        if isinstance(pad, str):
            raise SnncError(f"{self.where(name, node)}: string padding {pad!r} is not supported; give numbers")
        per_axis = lambda v: [int(a) for a in np.broadcast_to(np.asarray(v), (nd,))]
        pads, stride, dilation = per_axis(pad), per_axis(node.stride), per_axis(node.dilation)
        attrs = {"pads": pads + pads, "stride": stride, "dilation": dilation, "groups": int(node.groups)}
        params = {"weight": w}
        if node.bias is not None and np.size(node.bias):
            params["bias"] = _tensor(node.bias).reshape(-1)
        size = self.shape_of(x)[1:]
        out = [
            (s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in zip(size, pads, dilation, w.shape[2:], stride)
        ]
        return self.emit("conv", name, [x], (w.shape[0], *out), attrs, params)

    def op_Conv1d(self, name, node, x):
        return self._conv(name, node, x, 1)

    def op_Conv2d(self, name, node, x):
        return self._conv(name, node, x, 2)

    def op_Flatten(self, name, node, x):
        shape = self.shape_of(x)
        start, end = int(node.start_dim), int(node.end_dim)
        if start == 1 and end == -1 and self._batched_flatten(node, shape):
            start = 0  # torch's convention on a batch: the same whole-sample flatten
        if start != 0 or end not in (-1, len(shape) - 1):
            raise SnncError(
                f"{self.where(name, node)}: only flattening a whole sample (start_dim 0, end_dim -1) "
                f"is supported, got {start}..{end}"
            )
        return self.emit("flatten", name, [x], (int(np.prod(shape)),), {"axis": 1})

    def _batched_flatten(self, node, shape) -> bool:
        """Whether a start_dim-1 Flatten is torch's convention on a batch (``snnc export
        --nir-flatten torch`` says so in the metadata; other writers by a batched input_type
        [1, *sample]) rather than a flatten of a sample's inner axes."""
        meta = getattr(self.nir_graph, "metadata", None) or {}
        if meta.get("producer") == "snncompiler" and meta.get("flatten") == "torch":
            return True
        declared = node.input_type.get("input") if isinstance(node.input_type, dict) else None
        try:
            declared = tuple(int(d) for d in np.asarray(declared).reshape(-1)) if declared is not None else ()
        except (TypeError, ValueError, OverflowError):
            return False
        return declared == (1, *shape)

    def _pool(self, name, node, x, scale_by_area: bool):
        kernel = [int(k) for k in np.broadcast_to(np.asarray(node.kernel_size), (2,))]
        stride = [int(k) for k in np.broadcast_to(np.asarray(node.stride), (2,))]
        pads = [int(k) for k in np.broadcast_to(np.asarray(node.padding), (2,))]
        c, *size = self.shape_of(x)
        out = [(s + 2 * p - k) // st + 1 for s, p, k, st in zip(size, pads, kernel, stride)]
        y = self.emit(
            "avgpool",
            name,
            [x],
            (c, *out),
            {"kernel": kernel, "stride": stride, "pads": pads + pads, "count_include_pad": 1},
        )
        if scale_by_area:  # a sum pool is the average times the window's area
            y = self.emit(
                "mul",
                f"{name}_sum",
                [y],
                (c, *out),
                params={"const": torch.tensor(float(np.prod(kernel)))},
                source=name,
            )
        return y

    def op_AvgPool2d(self, name, node, x):
        return self._pool(name, node, x, False)

    def op_SumPool2d(self, name, node, x):
        return self._pool(name, node, x, True)

    def op_Scale(self, name, node, x):
        shape = self.shape_of(x)
        scale = _uniform(node.scale, shape, "scale", self.where(name, node))
        return self.emit("mul", name, [x], shape, params={"const": _channel(scale, shape)})

    def _neuron(self, name, node, x, gain, lif_tau=None):
        where = self.where(name, node)
        shape = self.shape_of(x)
        v_reset = _tensor(node.v_reset) if node.v_reset is not None else torch.zeros(())
        if bool((v_reset != 0).any()):
            raise SnncError(f"{where}: v_reset must be 0 (snnc's kernels reset to 0)")
        theta = _uniform(_tensor(node.v_threshold) / gain, shape, "v_threshold / (r·dt)", where)
        if not bool(torch.isfinite(theta).all()) or bool((theta <= 0).any()):
            raise SnncError(f"{where}: the effective threshold v_threshold / gain must be finite and > 0")
        # NIR neurons reset to v_reset (checked to be 0 above) and start at 0, unless the file says
        # it holds snnc's soft reset / θ/2 start (see _neuron_conventions)
        attrs = NeuronSpec.from_attrs(
            {"neuron": "lif" if lif_tau is not None else "if", "tau": lif_tau, "reset": self.reset, "v0": self.v0},
            where=where,
        ).attrs()
        spikes = self.emit("neuron", name, [x], shape, attrs, {"theta": theta})
        # snnc neurons emit θ·s, NIR neurons s
        return self.emit(
            "mul", f"{name}_spikes", [spikes], shape, params={"const": _channel(1.0 / theta, shape)}, source=name
        )

    def op_IF(self, name, node, x):
        gain = _tensor(node.r) * self.dt
        return self._neuron(name, node, x, gain)

    def op_LIF(self, name, node, x):
        where = self.where(name, node)
        if bool((_tensor(node.v_leak) != 0).any()):
            raise SnncError(f"{where}: v_leak must be 0")
        tau_steps = _uniform(_tensor(node.tau) / self.dt, self.shape_of(x), "tau", where)
        if tau_steps.dim() or not float(tau_steps) > 1.0:
            raise SnncError(f"{where}: tau / dt must be one value > 1 per layer, got {tau_steps.tolist()}")
        gain = _tensor(node.r) * self.dt / _tensor(node.tau)
        return self._neuron(name, node, x, gain, lif_tau=float(tau_steps))


def _conventional_lif(node) -> bool:
    """Whether a LIF node has r = tau / 1e-4 (and tau > 1e-4): SpikingJelly's, snnTorch's and our
    writer's convention, under which one step of 1e-4 s is v ← (1 − 1/τ)·v + I."""
    try:
        r, tau = np.asarray(node.r, np.float64), np.asarray(node.tau, np.float64)
        return bool(np.all(tau > CONVENTIONAL_DT)) and bool(np.allclose(r * CONVENTIONAL_DT, tau, rtol=1e-5))
    except (TypeError, ValueError):
        return False


def _channel(value: torch.Tensor, shape) -> torch.Tensor:
    """A scalar or per-channel [C] value shaped to broadcast over a [B, C, ...] batch."""
    if value.dim() == 0:
        return value
    return value.reshape((-1,) + (1,) * (len(shape) - 1))


PROBE_SECONDS = 30
# run by path, not imported: the child needs h5py and nir, not snncompiler's (torch's) import time
PROBE_CODE = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"


def _probe(label: str) -> None:
    """Read the file once in a child process first: some damaged HDF5 files (a corrupt heap
    reference in a string dataset) make the HDF5 library loop forever, which nothing in this
    process could interrupt. The child first checks that the file reaches no other file
    (:mod:`.hdf5_confine`) and reads nothing if it does. Nothing comes back from the child but its
    exit status; the check is repeated here to name what was refused."""
    import subprocess
    import sys

    from . import hdf5_confine

    try:
        # -P: not the current directory on sys.path, so no stray nir.py or h5py.py there is imported
        subprocess.run(
            [sys.executable, "-P", "-c", PROBE_CODE, hdf5_confine.__file__, label],
            capture_output=True,
            timeout=PROBE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise SnncError(f"{label}: reading it did not finish in {PROBE_SECONDS} s (a damaged HDF5 file?)") from None
    try:
        problem = hdf5_confine.outside_reference(label)
    except Exception:  # damaged: nir.read below says so in one line
        problem = None
    if problem:
        raise SnncError(f"{label}: {problem}")


def _read_graph(nir, label: str):
    """``nir.read``, and if NIR's own type check refuses the file, the same without it: some
    files declare shapes NIR's inference cannot reconcile (a Flatten input_type traced on a batch,
    [1, C, H, W] after a [C, H, W] node, as ``snnc export --nir-flatten torch`` writes for snnTorch
    and Norse) where the nodes' parameters still say everything. :class:`_Importer` infers every shape from the Input node and the
    parameters, and ``infer_shapes`` checks that each node accepts its input, so a file that is
    really inconsistent is still refused, naming the node."""
    import inspect

    def one_line(exc: Exception) -> str:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    try:
        return nir.read(label)
    except Exception as exc:  # a truncated or foreign HDF5 file, or one NIR's type check refuses
        first = exc
    if "type_check" in inspect.signature(nir.read).parameters:  # a nir without the check has nothing to skip
        try:
            return nir.read(label, type_check=False)
        except Exception:  # not a type-check matter: the first error says what is wrong
            pass
    raise SnncError(f"{label}: not a readable NIR file ({one_line(first)})") from first


def read_nir(path, *, dt: float | None = None, timesteps: int | None = None) -> tuple[Graph, dict, dict]:
    """Read a NIR file: the IR graph that runs on snnc's runtime, its options (default T, hard
    reset and v0 zero — or the reset and v0 an snnc-written file records —, direct encoding) and a report (source, dt), from which
    :func:`snncompiler.model.load` builds the model (see the module docstring for how NIR's
    continuous-time neurons are read)."""
    from ...options import DEFAULT_TIMESTEPS

    label = str(path)
    try:
        import nir
    except ImportError as exc:
        raise SnncError("reading NIR needs the nir package (pip install 'snncompiler[nir]')") from exc
    _probe(label)
    graph = _read_graph(nir, label)
    importer = _Importer(graph, label, dt)
    ir = importer.run()
    ir.metadata["source_file"] = label
    meta = getattr(graph, "metadata", None) or {}
    steps = timesteps or meta.get("timesteps", DEFAULT_TIMESTEPS)
    if isinstance(steps, (bool, float)) or not str(steps).isdigit() or int(steps) < 1:
        raise SnncError(f"{label}: metadata 'timesteps' must be a positive integer, got {steps!r}")
    steps = int(steps)
    check_timesteps(steps, f"{label}: metadata 'timesteps'")
    options = {"timesteps": steps, "reset": importer.reset, "v0": importer.v0, "threshold": "nir", "encoding": "direct"}
    return ir, options, {"source": "nir", "dt": importer.dt}
