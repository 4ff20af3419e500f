"""Accuracy and related measurements shared by the CLI, the API and the benchmarks."""

from __future__ import annotations

import numpy as np
import torch

from .. import distributed


def _as_array(logits) -> np.ndarray:
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    return np.asarray(logits)


def picks_class(logits) -> bool:
    """Whether a model's output is the predicted class itself (an integer or bool output with one
    value per sample: a model that ends in ArgMax, or a thresholded binary decision) rather than
    per-class scores. A non-float output with several values per sample is an error: it is
    neither (say, TopK's indices or a mask per pixel)."""
    from ..errors import SnncError

    logits = _as_array(logits)
    if logits.dtype.kind in "fc":
        return False
    per_sample = int(np.prod(logits.shape[1:])) if logits.ndim > 1 else 1
    if per_sample != 1:
        raise SnncError(
            f"output: a {logits.dtype} output with {per_sample} values per sample is neither class scores "
            "nor one class index per sample; accuracy needs one of them"
        )
    return True


def top1(logits) -> np.ndarray:
    """Predicted class per sample, [N]: the argmax over the flattened scores, or the output
    itself where it is one class index per sample (:func:`picks_class`)."""
    logits = _as_array(logits)
    if picks_class(logits):
        return logits.reshape(-1).astype(np.int64)
    return logits.reshape(logits.shape[0], -1).argmax(axis=1)


def correct(logits, labels) -> int:
    """How many of ``logits`` [N, classes] (or class indices [N] / [N, 1], see
    :func:`picks_class`) pick their int label [N]; labels that are not class indices of the
    logits are an error (a silent 0% would hide a mislabelled file)."""
    from ..errors import SnncError

    labels = np.asarray(labels)
    if labels.shape != (len(logits),):
        raise SnncError(f"'y': expected {len(logits)} labels (one per sample), got shape {list(labels.shape)}")
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise SnncError("'y': labels must be integer class indices, got fractional values")
    if picks_class(logits):  # the number of classes is unknown: only a negative label is surely wrong
        if labels.size and labels.min() < 0:
            raise SnncError(f"'y': labels must be class indices ≥ 0, got {labels.min()}")
        return int((top1(logits) == labels).sum())
    classes = int(np.prod(np.shape(logits)[1:])) if np.ndim(logits) > 1 else 0
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise SnncError(
            f"'y': labels must be class indices 0..{classes - 1} of the model's {classes} outputs, "
            f"got values from {labels.min()} to {labels.max()}"
        )
    return int((top1(logits) == labels).sum())


def accuracy(logits, labels) -> float:
    """Top-1 accuracy of ``logits`` [N, classes] against int labels [N] (checked as in :func:`correct`)."""
    n = len(np.asarray(labels))
    return correct(logits, labels) / n if n else float("nan")


# ---- synaptic operations and energy --------------------------------------------------------
# Energy per operation in 45 nm CMOS (Horowitz, ISSCC 2014): add / multiply 0.9 / 3.7 pJ in
# float32, 0.4 / 1.1 pJ in float16, 0.03 / 0.2 pJ in int8. A spike reaching a synapse costs an
# accumulate (AC, one add); a real-valued input a multiply-accumulate (MAC). An analytic
# estimate of arithmetic only: memory traffic, which often dominates on silicon, is not counted.
ENERGY_PRESETS = {"fp32": {"mac": 4.6, "ac": 0.9}, "fp16": {"mac": 1.5, "ac": 0.4}, "int8": {"mac": 0.23, "ac": 0.03}}
ENERGY_PJ = ENERGY_PRESETS["fp32"]
ENERGY_SOURCE = "45 nm CMOS, Horowitz ISSCC 2014; arithmetic only, an analytic estimate, not silicon"
ENERGY_MODEL = f"float32: MAC 4.6 pJ, AC 0.9 pJ ({ENERGY_SOURCE})"

_SYNAPTIC_OPS = ("conv", "conv_transpose", "linear", "matmul")
# ops whose output entries are copies of input entries (or zeros): spikes in, spikes out
_SPIKE_PRESERVING = (
    "reshape",
    "flatten",
    "transpose",
    "identity",
    "concat",
    "split",
    "slice",
    "gather",
    "gather_nd",
    "maxpool",
    "pad",
)


def _weight_key(node) -> str | None:
    for key in ("weight", "rhs", "lhs"):
        if key in node.params:
            return key
    return None  # a product of two activations: no synapses to count


def _copies_entries(node) -> bool:
    """Whether every output entry of ``node`` is a copy of an input entry or a zero: constant
    padding, and nearest-neighbour resizing (an upsample repeats each spike, it does not blend it)."""
    if node.op == "pad":
        return node.attrs.get("mode", "constant") == "constant"
    if node.op == "resize":
        return node.attrs.get("mode", "nearest") == "nearest"
    if node.op == "gather_elements":  # at constant indices (computed ones make an analog island)
        return "indices" in node.params
    if node.op in ("scatter_elements", "scatter_nd"):  # overwritten, not combined
        return node.attrs.get("reduction", "none") == "none"
    return node.op in _SPIKE_PRESERVING


def input_kinds(graph, encoding: str = "direct") -> dict[str, str]:
    """For every value of a neuronized graph: ``static`` (constant over time: computed once),
    ``spikes`` (0 or θ each step) or ``analog`` (real-valued each step)."""
    kinds = {graph.inputs[0].name: "static" if encoding == "direct" else ("spikes" if encoding == "rate" else "analog")}
    for node in graph.nodes:
        ins = [kinds.get(i, "static") for i in node.inputs]  # constants are static
        if node.op == "neuron":
            kind = "spikes"
        elif all(k == "static" for k in ins):
            kind = "static"
        elif _copies_entries(node) and all(k in ("spikes", "static") for k in ins):
            kind = "spikes" if "spikes" in ins else "static"
        elif node.op in ("mul", "div") and len(node.inputs) == 1 and not node.attrs.get("const_first"):
            kind = ins[0]  # spikes times a constant (a NIR import's 1/θ) are still events of one size
        else:
            kind = "analog"
        for out in node.outputs:
            kinds[out] = kind
    return kinds


def synaptic_operations(model, x, timesteps: int, *, batch_size: int = 256, **overrides) -> dict:
    """Synaptic operations per sample of a compiled spiking model, measured on ``x`` over
    ``timesteps`` steps, against the dense MACs of its ANN; with an energy estimate.

    For every conv / linear / constant matmul: ``dense_macs`` (the ANN's multiply-accumulates
    per sample, all weights, padding excluded), ``event_rate`` (fraction of input entries that are
    nonzero per step), ``ops_per_step`` (nonzero inputs × their nonzero synapses, per step: what
    an event-driven engine performs, exact by linearity from the event rates) and ``ops`` (over
    the run: a static input, such as the first layer's under direct encoding, is computed once).
    Spike inputs cost accumulates (``ac``), real-valued inputs multiply-accumulates (``mac``).
    ``energy_pj`` prices them in float32, ``energy_presets_pj`` also in float16 and int8
    (:data:`ENERGY_PRESETS`). Sparse weights count twice over: fewer synapses per event, and fewer events downstream.
    Under a torch.distributed process group each rank runs its shard of ``x`` and the per-layer
    sums of event rates are added up over the ranks before dividing by the number of samples.
    """
    import copy

    from ..runtime.executor import run_node

    graph = model.graph
    kinds = input_kinds(graph, model.options.get("encoding", "direct"))
    layers = [n for n in graph.nodes if n.op in _SYNAPTIC_OPS and _weight_key(n) is not None]
    names = sorted({n.inputs[0] for n in layers})
    n = len(x)
    xt = model._input(distributed.shard(x))  # under a process group: this rank's samples, sums added up below
    runner = model.runner(**overrides)
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, len(xt), batch_size):
        rates = runner.event_rates(
            xt[start : start + batch_size], timesteps, names, chunk=overrides.get("chunk", model.options["chunk"])
        )
        for name, r in rates.items():
            part = r.sum(0, keepdim=True).cpu()
            totals[name] = totals[name] + part if name in totals else part
    if distributed.is_distributed():  # sums of per-sample event rates over every rank's samples
        shapes = {name: graph.shape(name) for name in names}
        for name in names:
            local = totals.get(name)
            if local is None:  # an empty shard: the layer's input shape from the graph
                local = torch.zeros([1] + list(shapes[name][1:]))
            totals[name] = distributed.all_reduce_sum(local)
    rows, counts = [], {"mac": 0.0, "ac": 0.0}
    ann_macs = 0.0
    with torch.no_grad():
        for node in layers:
            rate = totals[node.inputs[0]] / n  # [1, ...]: mean over samples, linear in the count
            key = _weight_key(node)
            w = node.params[key].cpu()
            masked, dense = copy.copy(node), copy.copy(node)
            masked.params = {key: (w != 0).float()}
            dense.params = {key: torch.ones_like(w, dtype=torch.float32)}
            per_step = float(run_node(masked, [rate])[0].sum())
            macs = float(run_node(dense, [torch.ones_like(rate)])[0].sum())
            kind = kinds.get(node.inputs[0], "analog")
            ops = per_step if kind == "static" else per_step * timesteps
            counts["ac" if kind == "spikes" else "mac"] += ops
            ann_macs += macs
            rows.append(
                {
                    "node": node.name,
                    "op": node.op,
                    "input": kind,
                    "event_rate": float(rate.mean()),
                    "weight_density": float((w != 0).float().mean()),
                    "dense_macs": macs,
                    "ops_per_step": per_step,
                    "ops": ops,
                }
            )

    def energy(pj):
        snn, ann = counts["mac"] * pj["mac"] + counts["ac"] * pj["ac"], ann_macs * pj["mac"]
        return {"ann": ann, "snn": snn, "snn_over_ann": snn / ann if ann else float(np.nan)}

    return {
        "timesteps": int(timesteps),
        "samples": int(n),
        "layers": rows,
        "ann_macs": ann_macs,
        "snn_macs": counts["mac"],
        "snn_acs": counts["ac"],
        "energy_pj": energy(ENERGY_PJ),
        "energy_model": ENERGY_MODEL,
        "energy_presets_pj": {name: energy(pj) for name, pj in ENERGY_PRESETS.items()},
    }


def format_synaptic_operations(sops: dict) -> str:
    """The report of :func:`synaptic_operations` as text: a table per layer and the totals."""
    from .summary import format_table

    rows = [
        dict(
            r,
            ratio=f"{r['ops_per_step'] / r['dense_macs']:.4f}" if r["dense_macs"] else "-",
            weight_density=f"{r['weight_density']:.3f}",
            event_rate=f"{r['event_rate']:.3f}",
            ops_per_step=f"{r['ops_per_step']:,.0f}",
            dense_macs=f"{r['dense_macs']:,.0f}",
        )
        for r in sops["layers"]
    ]
    ratios = ", ".join(f"{name} {e['snn_over_ann']:.3f}" for name, e in sops["energy_presets_pj"].items())
    return "\n".join(
        [
            f"synaptic operations per sample at T={sops['timesteps']} on {sops['samples']} samples "
            "(ops: nonzero inputs × their nonzero weights; a static input is computed once):",
            format_table(
                rows,
                [
                    ("node", "layer"),
                    ("input", "input"),
                    ("weight_density", "weights kept"),
                    ("event_rate", "input events"),
                    ("ops_per_step", "ops/step"),
                    ("dense_macs", "ANN MACs"),
                    ("ratio", "ops/step ÷ MACs"),
                ],
            ),
            f"ANN {sops['ann_macs']:,.0f} MACs; SNN over T={sops['timesteps']}: {sops['snn_acs']:,.0f} ACs + "
            f"{sops['snn_macs']:,.0f} MACs; energy SNN/ANN {ratios} ({ENERGY_SOURCE})",
        ]
    )
