"""Fine-tune a compiled (converted) spiking model with surrogate gradients at a few timesteps.

Conversion gives weights and thresholds that are right on average over many steps; at T = 1–4
the rate code is too coarse. Hybrid training (Rathi et al., ICLR 2020) starts from the converted
network and trains it as an SNN at the small T it will run at. Here the artifact's IR becomes a
torch module (:class:`GraphNet`): every node runs its core op on the time-flattened batch, every
neuron is a :class:`~snncompiler.train.LIF` with the node's own settings and threshold, and
:func:`~snncompiler.train.fit` trains it with the TET loss on the kernels' fused backward. The
result is written back into a copy of the IR: the same artifact format, the same runtime.

Max pooling trains in the form it runs: ``rate`` (the default) as the increments of the
window's largest running input sum, whose gradient reaches the inputs of the leading window
member; ``output`` and ``input`` as the plain per-step max. Potential calibration's offsets
(``v_init``) and hard reset's input gains stay fixed and act as they do at run time. Not
supported, each a one-line error: ``gated`` max pooling, analog islands (their runtime form
reads rate-decoded inputs), rate-encoded inputs.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch
from torch import nn

from ..errors import SnncError
from ..ir.neuron import NeuronSpec
from ..ir.ops import conversion_kind
from ..kernels.event import rate_max_pool_2x2
from ..limits import timestep_count
from ..options import FINETUNE_EPOCHS, FINETUNE_LR, FINETUNE_TIMESTEPS, check_seed, setting
from ..runtime.executor import Executor
from ..runtime.ops import IMPLEMENTATIONS, _pool_setup, channel_view
from .neuron import LIF

TRAINABLE = ("weight", "bias")


def _key(name: str) -> str:
    return re.sub(r"\W", "_", name)  # module and parameter names may not contain '.'


class _TrainingNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over axis 1 of any rank (conv maps and linear outputs alike), folded away after training."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise SnncError(f"batchnorm: expected [N, C, ...], got shape {list(x.shape)}")


def _plain_2x2_pool(node, x: torch.Tensor) -> bool:
    """Whether max pooling ``node`` on x [N, C, H, W] is 2×2 with stride 2, no padding or
    dilation, floor mode: what :func:`~snncompiler.kernels.event.rate_max_pool_2x2` computes."""
    if x.dim() != 4 or node.attrs.get("global") or node.attrs.get("ceil_mode", 0):
        return False
    _, kernel, stride, pads = _pool_setup(node, x)
    return (
        list(kernel) == [2, 2]
        and list(stride) == [2, 2]
        and not any(pads)
        and set(node.attrs.get("dilation", [1])) == {1}
    )


class GraphNet(nn.Module):
    """A neuronized IR graph as a trainable module over a time-flattened batch [T·B, ...]
    (run it with :func:`~snncompiler.train.run_steps`). Weights and biases are parameters;
    other node tensors (constants) are buffers; θ is learned when ``learn_theta``.

    With ``batchnorm`` every conv/linear output that feeds the network (not a graph output)
    gets a training-time BatchNorm over the time-flattened batch (as tdBN does), folded into its
    weights by :meth:`write_back`: a network trained from scratch needs it, and an exported
    ONNX has usually lost its BN layers to folding already."""

    def __init__(self, graph, *, learn_theta: bool = True, batchnorm: bool = False):
        super().__init__()
        islands = [n.name for n in graph.nodes if conversion_kind(n) == "analog"]
        if islands:
            raise SnncError(f"finetune: analog islands ({', '.join(islands)}) have no trainable spiking form")
        gated = [n.name for n in graph.find("maxpool") if n.attrs.get("spiking") == "gated"]
        if gated:
            raise SnncError(
                f"finetune: gated max pooling ({', '.join(gated)}) has no gradient; compile with "
                "--maxpool rate (the default), input or output"
            )
        self.graph = graph
        self.params = nn.ModuleDict()
        self.lifs = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        if batchnorm:
            outputs = {v.name for v in graph.outputs}
            for node in graph.nodes:
                shape = graph.shape(node.outputs[0]) or ()
                if (
                    node.op in ("conv", "linear")
                    and node.outputs[0] not in outputs
                    and (node.op == "conv" or len(shape) == 2)
                ):  # linear acts on the last axis
                    self.norms[_key(node.name)] = _TrainingNorm(node.params["weight"].shape[0])
        for node in graph.nodes:
            if node.op == "neuron":
                theta = node.params["theta"].float()
                spec = NeuronSpec.from_attrs(node.attrs, where=node.where)
                # the triangle surrogate as wide as θ: its area stays 1 whatever θ conversion chose
                self.lifs[_key(node.name)] = LIF(
                    neuron=spec.neuron,
                    tau=spec.tau,
                    theta=theta.reshape(-1) if theta.numel() > 1 else float(theta),
                    learn_theta=learn_theta,
                    reset=spec.reset,
                    v0=spec.v0,
                    surrogate="triangle",
                    alpha=float(theta.mean()),
                    v_init=node.params.get("v_init"),
                    population=spec.population,
                )
                continue
            holder = nn.Module()
            for key, value in node.params.items():
                if key in TRAINABLE:
                    holder.register_parameter(key, nn.Parameter(value.detach().float().clone()))
                else:
                    holder.register_buffer(key, value.detach().clone())
            self.params[_key(node.name)] = holder

    def _node_view(self, node):
        view = copy.copy(node)
        holder = self.params[_key(node.name)]
        view.params = {key: getattr(holder, key) for key in node.params}
        return view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T·B, ...] (time-major, as :func:`~snncompiler.train.run_steps` lays it out) →
        the graph's first output for every step, [T·B, ...]."""
        g = self.graph
        return Executor(g).interpret({g.inputs[0].name: x}, override=self._trainable_node)[g.outputs[0].name]

    def _trainable_node(self, node, ins):
        """The interpreter's override: every node runs on this module's parameters and neurons."""
        if node.op == "neuron":
            x, gain = ins[0], node.params.get("gain")
            if gain is not None:  # hard-reset compensation, as the runtime applies it (fires at θ/g)
                x = x * channel_view(gain.to(x.device), x)  # x: [T·B, C, ...], channels on axis 1
            return (self.lifs[_key(node.name)](x),)
        if node.op == "maxpool" and node.attrs.get("spiking") == "rate":
            return (self._rate_maxpool(node, ins[0]),)
        # "output" and "input" max pooling: the plain op, one step at a time
        outs = IMPLEMENTATIONS[node.op](self._node_view(node), *ins)
        if _key(node.name) in self.norms:
            outs = (self.norms[_key(node.name)](outs[0]),) + tuple(outs[1:])
        return outs

    def _rate_maxpool(self, node, x):
        """The runtime's rate max pooling (increments of the largest running sum), differentiably."""
        steps = next(iter(self.lifs.values())).timesteps
        seq = x.reshape((steps, -1) + tuple(x.shape[1:]))
        if _plain_2x2_pool(node, x):  # the C++ kernel: one pass each way instead of a dozen torch ops
            folded = seq.reshape((steps, -1) + tuple(x.shape[-2:]))
            pooled = rate_max_pool_2x2(folded)
            if pooled is not None:
                return pooled.reshape((x.shape[0],) + tuple(x.shape[1:-2]) + tuple(pooled.shape[-2:]))
        pooled = IMPLEMENTATIONS["maxpool"](node, seq.cumsum(0).flatten(0, 1))[0]
        pooled = pooled.reshape((steps, -1) + tuple(pooled.shape[1:]))
        return torch.diff(pooled, dim=0, prepend=torch.zeros_like(pooled[:1])).flatten(0, 1)

    def write_back(self):
        """A copy of the graph holding the trained weights and thresholds."""
        graph = self.graph.copy()
        for node in graph.nodes:
            if node.op == "neuron":
                theta = self.lifs[_key(node.name)].threshold()
                if not bool(torch.isfinite(theta).all()) or bool((theta <= 0).any()):
                    raise SnncError(
                        f"{node.where}: fine-tuning drove θ to {theta.min().item():g}; "
                        "lower --lr or pass --no-learn-theta"
                    )
                node.params["theta"] = theta.reshape(node.params["theta"].shape)
                continue
            holder = self.params[_key(node.name)]
            for key in node.params:
                if key in TRAINABLE:
                    node.params[key] = getattr(holder, key).detach().cpu().clone()
            if _key(node.name) in self.norms:
                self._fold(node, self.norms[_key(node.name)])
        return graph

    @staticmethod
    def _fold(node, norm):
        """Fold a training-time BatchNorm's running statistics into its conv/linear node."""
        with torch.no_grad():
            scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).cpu()
            shift = norm.bias.cpu() - norm.running_mean.cpu() * scale
            w = node.params["weight"]
            node.params["weight"] = w * scale.reshape((-1,) + (1,) * (w.dim() - 1))
            node.params["bias"] = node.params.get("bias", torch.zeros_like(scale)) * scale + shift


def epoch_bar(epochs: int, desc: str, progress: bool = True):
    """A bar of ``epochs`` on stderr (:func:`snncompiler.progress.progress_bar`): on a terminal,
    on rank 0 only, and not at all when ``progress`` is False."""
    from .. import distributed
    from ..progress import progress_bar

    return progress_bar(epochs, desc, "epoch", enabled=None if progress and distributed.is_main() else False)


def show_epoch(bar, row: dict) -> None:
    """Advance ``bar`` by one epoch of :func:`~snncompiler.train.fit`'s history ``row``, showing
    its loss, training accuracy and (when scored) held-out accuracy, and ``row["T"]`` if set."""
    shown = {"T": row["T"]} if "T" in row else {}  # the stage's T, in a schedule of several
    shown.update(loss=f"{row['loss']:.4f}", train=f"{row['train_accuracy']:.4f}")
    if "val_accuracy" in row:
        shown["val"] = f"{row['val_accuracy']:.4f}"
    bar.set_postfix(shown, refresh=False)
    bar.update(1)
    bar.refresh()  # every epoch, not only those tqdm's rate limit lets through: an epoch is slow


def ann_teacher(model):
    """A callable batch → logits running ``model``'s ANN (see :func:`finetune`'s ``distill``)."""
    from ..runtime.executor import Executor

    graph = model.ann_graph if model.ann_graph is not None else model.graph
    executor, name, out = Executor(graph), graph.inputs[0].name, graph.outputs[0].name
    return lambda batch: executor.run({name: batch.cpu()})[out]


def finetune(
    model,
    train,
    *,
    timesteps: int = FINETUNE_TIMESTEPS,
    epochs: int = FINETUNE_EPOCHS,
    lr: float = FINETUNE_LR,
    learn_theta: bool = True,
    val=None,
    holdout: float = 0.2,
    keep_if_better: bool = True,
    distill: float = 0.0,
    **fit_options,
):
    """Fine-tune a compiled model (a :class:`~snncompiler.model.CompiledModel` or an artifact
    path) on labelled ``train`` data at ``timesteps`` steps; returns a CompiledModel.

    The result is scored against the model as it came on held-out data at ``timesteps``: ``val``
    if given, else a random ``holdout`` fraction of ``train`` (which is then not trained on).
    With ``keep_if_better`` (the default) the fine-tuned model is returned only when it is more
    accurate there; otherwise the original comes back, with the reason in its report
    (``report["finetune"]``, as for a kept one). ``fit_options`` go to
    :func:`~snncompiler.train.fit` (``batch_size``, ``loss``, ``seed``, ``device``, ``on_epoch``),
    except ``progress`` (default True): a tqdm bar of epochs with the loss and training accuracy
    on stderr, shown only on a terminal (see :mod:`snncompiler.progress`); False: nothing.

    ``distill`` > 0 distils the ANN into the SNN while it trains (``fit``'s ``teacher``, with
    this weight; ``temperature`` goes to fit): the ANN the model was compiled from when this
    process compiled it, else the artifact's own ANN mode (every neuron as clip(x, 0, θ)).
    """
    from ..analysis.metrics import accuracy
    from ..data import Dataset
    from ..model import CompiledModel, first_output
    from ..runtime.executor import check_input
    from .trainer import as_dataset, fit

    if not isinstance(model, CompiledModel):
        from ..model import load

        model = load(model)
        if not isinstance(model, CompiledModel):
            raise SnncError("model: a plain ONNX ANN; compile it with `snnc compile` before fine-tuning")
    encoding = setting(model.options, "encoding")
    if encoding == "rate":
        raise SnncError("finetune: rate-encoded inputs are random at every step; fine-tune a direct-encoding model")
    timestep_count(timesteps)
    data = as_dataset(train, "train")
    sequence = encoding == "sequence"
    check_input(model.graph.inputs[0], torch.from_numpy(data.x), "train", sequence=sequence)  # not deep in a layer
    if val is None:
        if not 0 < holdout < 1:
            raise SnncError(f"holdout: must lie in (0, 1), got {holdout!r}")
        cut = len(data) - max(1, int(round(len(data) * holdout)))
        if cut < 1:
            raise SnncError(f"train: {len(data)} samples are too few to hold any out; pass val")
        seed = check_seed(fit_options.get("seed", 0))
        order = np.random.default_rng(seed).permutation(len(data))  # files may be sorted by class
        data, val = (
            Dataset(data.x[order[:cut]], data.y[order[:cut]]),
            Dataset(data.x[order[cut:]], data.y[order[cut:]]),
        )
    else:
        val = as_dataset(val, "val")
        check_input(model.graph.inputs[0], torch.from_numpy(val.x), "val", sequence=sequence)
    if distill:
        fit_options.update(teacher=ann_teacher(model), distill=distill)
    net = GraphNet(model.graph, learn_theta=learn_theta)  # reads the graph; write_back copies it
    progress = fit_options.pop("progress", True)
    caller_on_epoch = fit_options.pop("on_epoch", None)
    # one bar on rank 0 instead of fit's per-epoch lines, which also went to pipes and log files
    with epoch_bar(epochs, "finetune", progress) as bar:

        def on_epoch(row):
            show_epoch(bar, row)
            if caller_on_epoch is not None:
                caller_on_epoch(row)

        history = fit(
            net,
            data,
            timesteps=timesteps,
            epochs=epochs,
            lr=lr,
            sequence=sequence,
            progress=False,
            on_epoch=on_epoch,
            **fit_options,
        )
    net.cpu().eval()
    tuned = CompiledModel(net.write_back(), {**model.options, "timesteps": int(timesteps)}, dict(model.report))

    def score(m):  # the SNN at T only: evaluate() would also run the ANN mode
        return accuracy(first_output(m.run(val.x, timesteps)), val.y)

    before, after = score(model), score(tuned)
    kept = after > before or not keep_if_better
    note = {
        **history["settings"],
        "learn_theta": learn_theta,
        "val_samples": int(len(val)),
        "val_accuracy_before": before,
        "val_accuracy_after": after,
        "kept": kept,
        # per epoch without its seconds: the note goes into the artifact, whose bytes must not
        # depend on how fast the machine was (the same command writes the same file)
        "epochs_run": [{k: v for k, v in row.items() if k != "seconds"} for row in history["epochs"]],
    }
    result = tuned if kept else CompiledModel(model.graph, model.options, dict(model.report))
    result.report["finetune"] = note
    return result
