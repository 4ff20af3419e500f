"""Direct training of an ONNX architecture as a spiking network (`snnc train`).

The ONNX model goes through the same front end and conversion passes as ``snnc compile`` (BN
folded, ReLUs become IF/LIF neuron nodes with data-driven thresholds, max pooling in its
spiking form), and the neuronized IR is trained with surrogate gradients as a
:class:`~snncompiler.train.GraphNet`: the graph interpreter fine-tuning uses, so a trained model
and a fine-tuned one are the same kind of object and write the same artifact.

* ``init="ann"`` starts from the ONNX weights and their conversion thresholds (hybrid
  training, Rathi et al. 2020).
* ``init="random"`` re-initialises every weight (Kaiming-normal, fan-in, for ReLU; biases 0;
  BatchNorm to the identity) from ``seed`` *before* conversion, so the initial thresholds are the
  conversion thresholds of the random network: each layer's θ is matched to the scale of its
  input from the start, which a fixed θ = 1 is not once BN has been folded away.

A list of timesteps is a temporal-inheritance schedule (TET's TIT): training runs at the first
T, then continues from those weights at the next, each stage with a fresh Adam and cosine
schedule; see :func:`train_onnx` for how the epochs are shared.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ..errors import SnncError
from ..options import CompileOptions, check_seed

INITS = ("ann", "random")
#: Adam's learning rate by ``init``: from scratch (with BN) a larger step (measured on digits,
#: docs/training.md); from converted weights the fine-tuning rate, which keeps them near conversion.
DEFAULT_LR = {"random": 1e-2, "ann": 1e-3}


def parse_schedule(timesteps, epochs) -> list[tuple[int, int]]:
    """(T, epochs) per stage from ``timesteps`` (an int, a list of ints or text like "1,4") and
    ``epochs`` (a total, split over the stages with the remainder going to the first ones, or a
    list/text with one count per stage)."""

    def ints(value, name):
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            try:
                value = [int(p) for p in parts]
            except ValueError:
                raise SnncError(
                    f"--{name}: expected a positive integer or comma-separated ones, got '{','.join(parts)}'"
                ) from None
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
            raise SnncError(f"--{name}: must be positive integers, got {value!r}")
        return [int(v) for v in values]

    steps = ints(timesteps, "timesteps")
    counts = ints(epochs, "epochs")
    if len(counts) == 1 and len(steps) > 1:
        total = counts[0]
        if total < len(steps):
            raise SnncError(f"--epochs: {total} epoch(s) cannot be shared by {len(steps)} timestep stages")
        base, extra = divmod(total, len(steps))
        counts = [base + (1 if k < extra else 0) for k in range(len(steps))]
    if len(counts) != len(steps):
        raise SnncError(
            f"--epochs: {len(counts)} counts for {len(steps)} timestep stages; give one total or one count per stage"
        )
    from ..limits import check_timesteps

    for t in steps:
        check_timesteps(t, "--timesteps")
    return list(zip(steps, counts))


def reinitialise(graph, seed: int):
    """A copy of an ANN graph with fresh weights: Kaiming-normal (fan-in, ReLU gain) for every
    weight of rank ≥ 2, zero biases, BatchNorm as the identity; deterministic under ``seed``."""
    graph = graph.copy()
    gen = torch.Generator().manual_seed(check_seed(seed))
    for node in graph.nodes:
        if node.op == "batchnorm":
            p = node.params
            p.update(
                scale=torch.ones_like(p["scale"]),
                bias=torch.zeros_like(p["bias"]),
                mean=torch.zeros_like(p["mean"]),
                var=torch.ones_like(p["var"]),
            )
            continue
        weight = node.params.get("weight")
        if weight is None or weight.dim() < 2:
            continue
        fresh = torch.empty(weight.shape, dtype=torch.float32)
        torch.nn.init.kaiming_normal_(fresh, nonlinearity="relu", generator=gen)
        node.params["weight"] = fresh.to(weight.dtype)
        if "bias" in node.params:
            node.params["bias"] = torch.zeros_like(node.params["bias"])
    return graph


def train_onnx(
    model,
    train,
    *,
    timesteps=4,
    epochs=15,
    init: str = "random",
    seed: int = 0,
    val=None,
    loss: str = "tet",
    lamb: float = 1e-3,
    lr: float | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    neuron: str = "if",
    tau: float = 0.0,
    population: int = 1,
    learn_theta: bool = True,
    calib_samples: int = 512,
    batchnorm: bool | None = None,
    rate_penalty: float = 0.0,
    progress: bool = True,
):
    """Train an ONNX architecture directly as a spiking network; returns a
    :class:`~snncompiler.model.CompiledModel` (``.save`` writes the artifact ``snnc eval`` reads).

    Args:
        model: an ONNX path (or bytes/ModelProto, or an IR graph) of a ReLU network.
        train, val: labelled data: a :class:`~snncompiler.data.Dataset` or an (x, y) tuple of
            arrays; ``val`` is scored at each stage's T after every epoch (and is not trained on).
        timesteps: T, or a schedule of T values (a list or "1,4"): train at the first, continue
            at the next (temporal inheritance); the artifact's T is the last.
        epochs: the total number of epochs, shared evenly by the stages (earlier stages take the
            remainder: 15 over "1,4" is 8 at T=1 then 7 at T=4), or one count per stage.
        init: "random" (Kaiming weights from ``seed``, conversion thresholds of that random
            network) or "ann" (the ONNX weights and their conversion thresholds).
        loss, lamb: "tet" (with TET's λ) or "sdt"; lr, batch_size: Adam with a cosine schedule
            per stage (lr default: :data:`DEFAULT_LR` for the ``init``); device: where training runs.
        neuron, tau: "if" or "lif" (tau > 1; default 2 for lif) neurons in place of the ReLUs.
        population: B neurons per ReLU, the unit's output the mean of their spikes (T·B + 1 rate
            levels at T steps; see ``snnc compile --population``), trained and saved as such.
        learn_theta: train the thresholds along with the weights.
        calib_samples: training samples the conversion's thresholds are measured on.
        batchnorm: train with a BatchNorm after every hidden conv/linear, folded into its weights
            in the artifact (see :class:`~snncompiler.train.GraphNet`); default: with ``init="random"``
            (the thresholds then start at 1, the scale BN gives every pre-activation), not with "ann"
            (the converted weights are already scaled for their thresholds).
        rate_penalty: λ of a firing-rate penalty added to the loss (see :func:`~snncompiler.train.fit`):
            fewer spikes, less energy.
        progress: a tqdm bar on stderr with each epoch's loss and validation accuracy.

    The model's ``report["train"]`` records the settings, each stage's per-epoch loss and
    accuracies, and (with ``val``) the runtime's validation accuracy at the final T;
    ``model.train_history`` (not saved) has the same rows with each epoch's seconds.
    """
    from ..analysis.metrics import accuracy
    from ..compiler import compile as snn_compile
    from ..compiler import load_ann
    from ..ir import Graph
    from ..model import CompiledModel, first_output
    from ..runtime.executor import checked_device
    from .finetune import GraphNet, epoch_bar, show_epoch
    from .trainer import as_dataset, fit

    if init not in INITS:
        raise SnncError(f"--init: expected one of {', '.join(INITS)}, got '{init}'")
    # neuron, tau (0 or None: the default) and calib_samples are checked where every compile checks them
    checked = CompileOptions(neuron=neuron, tau=tau or None, calib_samples=calib_samples, population=population)
    neuron, tau, population = checked.neuron, checked.tau, checked.population
    stages = parse_schedule(timesteps, epochs)
    checked_device(device)  # before the conversion pass, not at the first batch
    if lr is None:
        lr = DEFAULT_LR[init]
    data = as_dataset(train, "train")
    val_data = None if val is None else as_dataset(val, "val")
    graph = model if isinstance(model, Graph) else load_ann(model)
    if init == "random":
        graph = reinitialise(graph, seed)
    final_t = stages[-1][0]
    converted = snn_compile(
        graph,
        data.x[:calib_samples],
        timesteps=final_t,
        neuron=neuron,
        tau=tau,
        population=population,
        calibration="none",  # training sets the weights: a LIF's default bias calibration would be undone
        seed=seed,
        quiet=True,
    )
    if batchnorm is None:
        batchnorm = init == "random"
    if batchnorm and init == "random":
        for node in converted.graph.find("neuron"):
            node.params["theta"] = torch.ones_like(node.params["theta"])
    try:
        net = GraphNet(converted.graph, learn_theta=learn_theta, batchnorm=batchnorm)
    except SnncError as exc:  # GraphNet names its first user; here the command is train
        raise SnncError(re.sub(r"^finetune: ", "train: ", str(exc))) from None

    # the one epoch bar of fine-tuning too: on a terminal and rank 0 only (snncompiler.progress)
    bar = epoch_bar(sum(e for _, e in stages), "snnc train", progress)
    history, timed = [], []
    try:
        for number, (steps, count) in enumerate(stages, 1):

            def show(row, steps=steps):
                show_epoch(bar, {"T": steps, **row})

            # each stage its own seed: the data order of a later stage differs from the first's
            run = fit(
                net,
                data,
                timesteps=steps,
                epochs=count,
                loss=loss,
                lamb=lamb,
                lr=lr,
                batch_size=batch_size,
                val=val_data,
                seed=seed + number - 1,
                device=device,
                progress=False,
                on_epoch=show,
                rate_penalty=rate_penalty,
            )
            history.append(
                {
                    "timesteps": steps,
                    "epochs": count,
                    # without seconds: the note goes into the artifact, whose bytes must
                    # not depend on the machine's speed
                    "epochs_run": [{k: v for k, v in row.items() if k != "seconds"} for row in run["epochs"]],
                }
            )
            timed.append({"timesteps": steps, "epochs": run["epochs"]})
    finally:
        bar.close()
    net.cpu().eval()
    graph = net.write_back()
    note = {
        "init": init,
        "schedule": [[t, e] for t, e in stages],
        "loss": loss,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "neuron": neuron,
        "learn_theta": learn_theta,
        "batchnorm": bool(batchnorm),
        "train_samples": int(len(data)),
        "stages": history,
    }
    if loss == "tet":
        note["lamb"] = lamb
    if rate_penalty:
        note["rate_penalty"] = rate_penalty
    if population > 1:
        note["population"] = population
    trained = CompiledModel(graph, {**converted.options, "timesteps": final_t}, {**converted.report, "train": note})
    trained.train_history = timed  # with each epoch's seconds; not saved
    if val_data is not None:
        note["val_samples"] = int(len(val_data))
        note["val_accuracy"] = accuracy(first_output(trained.run(val_data.x, final_t)), val_data.y)
    return trained
