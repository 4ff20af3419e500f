"""Direct training of a spiking network with TET (or plain time-averaged cross-entropy).

:func:`fit` follows the TET authors' released recipe: Adam, cosine learning rate over the
epochs, the loss on the output of every step, static inputs presented at every step (or, with
``sequence=True``, inputs [N, T, ...] that bring one frame per step). Training
memory and time grow linearly with T, so TET's temporal inheritance (TIT) is simply ``fit`` at
a small T followed by a short ``fit`` of the same model at a larger T: the weights do not
depend on T.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..analysis.metrics import accuracy
from ..data import Dataset, validate
from ..errors import SnncError
from ..options import DISTILL_TEMPERATURE, DISTILL_WEIGHT, TRAIN_BATCH_SIZE, check_distill_weight, check_seed
from ..runtime.snn import output_steps
from .loss import LOSSES, tet_loss
from .neuron import keep_thresholds_positive, neurons, run_steps


def as_dataset(data, label: str) -> Dataset:
    """``data`` (a Dataset or an (x, y) pair of arrays or tensors) as a labelled Dataset, checked."""
    if isinstance(data, Dataset):
        data = (data.x, data.y)
    return validate(*[d.numpy() if isinstance(d, torch.Tensor) else d for d in data], label=label, require_labels=True)


class _Source:
    """Labelled data for fit/evaluate: arrays (a Dataset or an (x, y) tuple, checked and batched
    here) or any iterable of (x, y) batches, such as a torch DataLoader (batched by its owner)."""

    def __init__(self, data, label: str):
        self.label = label
        if isinstance(data, (Dataset, tuple)):
            if isinstance(data, tuple) and len(data) != 2:
                raise SnncError(f"{label}: expected an (x, y) tuple, got a tuple of {len(data)}")
            self.arrays, self.loader = as_dataset(data, label), None
        elif hasattr(data, "__iter__") and not isinstance(data, (str, bytes, np.ndarray, torch.Tensor)):
            self.arrays, self.loader = None, data
        else:
            raise SnncError(
                f"{label}: expected a Dataset, an (x, y) tuple of arrays or an iterable of "
                f"(x, y) batches such as a DataLoader, got {type(data).__name__}"
            )

    def samples(self) -> int | None:
        """Number of samples, when known before iterating."""
        if self.arrays is not None:
            return len(self.arrays)
        dataset = getattr(self.loader, "dataset", None)
        return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """(x, y) tensor batches; arrays are shuffled with ``generator`` when one is given."""
        if self.arrays is not None:
            x, y = torch.from_numpy(self.arrays.x), torch.from_numpy(self.arrays.y)
            order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                yield x[idx], y[idx]
            return
        for number, item in enumerate(self.loader, 1):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise SnncError(f"{self.label}: batch {number} is not an (x, y) pair")
            xb, yb = (torch.as_tensor(v) for v in item)
            if not xb.is_floating_point():
                raise SnncError(f"{self.label}: batch {number}: x must be floating point, got {xb.dtype}")
            if yb.dtype.is_floating_point or yb.dtype == torch.bool or yb.shape != xb.shape[:1]:
                raise SnncError(
                    f"{self.label}: batch {number}: y must be integer class labels of shape "
                    f"[{xb.shape[0]}], got {yb.dtype} {list(yb.shape)}"
                )
            yield xb.float(), yb.long()


def fit(
    model: nn.Module,
    train,
    *,
    timesteps: int | None = None,
    epochs: int = 30,
    loss: str = "tet",
    lamb: float = 1e-3,
    means: float = 1.0,
    lr: float = 1e-3,
    batch_size: int = TRAIN_BATCH_SIZE,
    weight_decay: float = 0.0,
    val=None,
    sequence: bool = False,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    on_epoch=None,
    rate_penalty: float = 0.0,
    teacher=None,
    distill: float = DISTILL_WEIGHT,
    temperature: float = DISTILL_TEMPERATURE,
) -> dict:
    """Train ``model`` (a network with :class:`~snncompiler.train.LIF` neurons) in place.

    Args:
        train, val: a :class:`~snncompiler.data.Dataset`, an (x, y) tuple (float32 [N, ...],
            int64 [N]; shuffled and batched with ``batch_size``) or an iterable of (x, y) batches
            such as a DataLoader (used as it comes); ``val`` is scored after every epoch at
            ``timesteps``.
        timesteps: T of training (default 4; with ``sequence``, the sequences' length).
        sequence: inputs are [N, T, ...] with one frame per step, not one static x per sample.
        loss: "tet" (:func:`~.loss.tet_loss` with ``lamb`` and ``means``) or "sdt" (cross-entropy
            of the time-mean output).
        lr, weight_decay, epochs, batch_size: Adam with a cosine schedule over the epochs.
        progress: print one line per epoch to stderr.
        on_epoch: called with each epoch's history row as it completes (a progress bar, say).
        rate_penalty: λ of a penalty λ·r added to the loss, r the firing rate over all LIF
            neurons (spikes per neuron per step, in [0, 1]) of the batch: fewer spikes, fewer
            synaptic operations, less energy. The gradient reaches the spikes through the surrogate.
        teacher: knowledge distillation from a network (the ANN a model was converted from): a
            callable mapping an input batch to its logits [B, C], run without gradients. The loss
            becomes (1 − ``distill``)·loss + ``distill``·τ²·KL(softmax(teacher/τ) ‖ softmax(O(t)/τ))
            averaged over the steps t (τ = ``temperature``, Hinton et al. 2015): the soft targets
            carry what the ANN learnt beyond the hard labels, which a few hundred fine-tuning
            samples the ANN already fits perfectly do not.

    Under a torch.distributed process group (``torchrun``) the model trains under
    DistributedDataParallel with the same global batches as one process: every rank draws the same
    shuffled order, runs its contiguous share of each ``batch_size`` batch, and the gradients are
    averaged so that each step is the step of the whole batch (batch statistics of BatchNorm layers
    are synchronised on GPUs; on CPU they are per rank). An iterable of batches (a DataLoader) is
    used as each rank's own batches: shard it with a DistributedSampler. The rate penalty is per rank.

    Returns a history: the settings and, per epoch, the mean loss, the training accuracy (of the
    time-mean output, on the batches as trained), the validation accuracy and the seconds taken.
    The settings are also kept on the model, so that :func:`~snncompiler.train.lowering` can record
    how it was trained.
    """
    if not isinstance(model, nn.Module):
        raise SnncError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if loss not in LOSSES:
        raise SnncError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise SnncError(f"lr: must be a positive number, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise SnncError(f"weight_decay: must be a non-negative number, got {weight_decay!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise SnncError(f"{name}: must be a positive integer, got {value!r}")
    if not (isinstance(rate_penalty, (int, float)) and math.isfinite(rate_penalty) and rate_penalty >= 0):
        raise SnncError(f"rate_penalty: must be a non-negative number, got {rate_penalty!r}")
    check_distill_weight(distill)
    seed = check_seed(seed)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise SnncError(f"temperature: must be a positive number, got {temperature!r}")
    if teacher is not None and not callable(teacher):
        raise SnncError(f"teacher: expected a callable batch -> logits, got {type(teacher).__name__}")
    if timesteps is None and not sequence:
        timesteps = 4
    data = _Source(train, "train")
    val_data = None if val is None else _Source(val, "val")
    dev = torch.device(device)
    model.to(dev)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net, world = _data_parallel(model, dev), distributed.world_size()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    criterion = (lambda out, lab: tet_loss(out, lab, lamb=lamb, means=means)) if loss == "tet" else LOSSES[loss]
    settings = {
        "method": loss,
        "timesteps": timesteps,
        "sequence": sequence,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "seed": seed,
        "train_samples": data.samples(),
    }
    if loss == "tet":
        settings.update(lamb=lamb, means=means)
    if rate_penalty:
        settings["rate_penalty"] = rate_penalty
    if teacher is not None:
        settings.update(distill=distill, temperature=temperature)
        criterion = _distilled(criterion, teacher, distill, temperature, sequence)
    rates = _RateProbe(model) if rate_penalty else None
    history = {"settings": settings, "epochs": []}
    classes = None
    try:
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            model.train()
            total, correct, seen = 0.0, 0, 0
            for xb, yb in data.batches(batch_size, gen):
                weight = 1.0
                if world > 1 and data.arrays is not None:  # this rank's share of the global batch
                    xb, yb, weight = _share(xb, yb, world)
                if classes is not None and data.arrays is None:  # a loader's batch, before it moves
                    _check_labels(yb, classes, epoch)
                xb, yb = xb.to(dev), yb.to(dev)
                out = run_steps(net, xb, timesteps, sequence=sequence)
                if classes is None:  # known from the first output: arrays are checked whole, once
                    classes = _output_classes(out)
                    _check_labels(torch.from_numpy(data.arrays.y) if data.arrays is not None else yb, classes, epoch)
                value = criterion(out, yb, xb) if teacher is not None else criterion(out, yb)
                if rates is not None:
                    value = value + rate_penalty * rates.take()
                if not torch.isfinite(value):
                    raise SnncError(f"fit: the loss became {float(value)} at epoch {epoch}; lower lr (now {lr:g})")
                opt.zero_grad(set_to_none=True)
                (value * weight if weight != 1.0 else value).backward()
                opt.step()
                keep_thresholds_positive(net)
                if weight:  # a rank with an empty share ran one sample with weight 0: it counts nothing
                    total += value.item() * len(yb)
                    correct += int((out.detach().mean(0).argmax(-1) == yb).sum())
                    seen += len(yb)
            total, correct, seen = _epoch_sums(total, correct, seen)
            if not seen:
                raise SnncError("train: yielded no batches")
            sched.step()
            row = {
                "epoch": epoch,
                "loss": total / seen,
                "train_accuracy": correct / seen,
                "seconds": time.perf_counter() - started,
            }
            if val_data is not None:
                scored = _evaluate(model, val_data, [timesteps] if timesteps else None, 256, dev, sequence)
                row["val_accuracy"] = scored["accuracy"][max(scored["accuracy"], key=int)]
            history["epochs"].append(row)
            if on_epoch is not None:
                on_epoch(row)
            if progress and distributed.is_main():
                extra = f"  val acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
                print(
                    f"[snnc train] epoch {epoch}/{epochs}  {loss} loss {row['loss']:.4f}  train acc "
                    f"{row['train_accuracy']:.4f}{extra}  ({row['seconds']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if rates is not None:
            rates.remove()
    model.eval()
    settings["train_samples"] = seen
    settings["timesteps"] = out.shape[0]  # a sequence's length when it was not given
    model._snnc_training = settings
    return history


def distill_loss(outputs: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ²·KL(softmax(teacher/τ) ‖ softmax(O(t)/τ)), averaged over the batch and the steps of
    outputs [T, B, C]: every step is pulled towards the teacher, as TET pulls every step towards
    the label (the τ² keeps the gradient's scale independent of τ)."""
    steps = outputs.shape[0]
    student = torch.log_softmax(outputs.flatten(0, 1) / temperature, -1)
    target = torch.softmax(teacher_logits.to(outputs.dtype) / temperature, -1).repeat(steps, 1)
    return torch.nn.functional.kl_div(student, target, reduction="batchmean") * temperature**2


def _distilled(criterion, teacher, weight: float, temperature: float, sequence: bool):
    """``criterion`` mixed with :func:`distill_loss` against ``teacher``'s logits of each batch
    (of a sequence's time-mean frame, as the model's own ANN mode sees it)."""

    def loss(out, labels, inputs):
        with torch.no_grad():
            logits = teacher(inputs.mean(1) if sequence else inputs)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if logits.shape != out.shape[1:]:
            raise SnncError(f"teacher: returned logits of shape {list(logits.shape)}, the model {list(out.shape[1:])}")
        return (1.0 - weight) * criterion(out, labels) + weight * distill_loss(out, logits.to(out.device), temperature)

    return loss


def _data_parallel(model: nn.Module, dev: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under a process group (gradients averaged over
    the ranks during backward, rank 0's initial weights broadcast); ``model`` itself otherwise."""
    if not distributed.is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if dev.type == "cuda":  # batch statistics over the global batch (SyncBatchNorm runs on GPUs only)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def _share(xb: torch.Tensor, yb: torch.Tensor, world: int):
    """This rank's contiguous share of a global batch, and the weight of its mean loss such that
    DistributedDataParallel's average over the ranks is the mean over the global batch
    (share size × world ÷ global size). An empty share runs one sample with weight 0, so that every
    rank still takes part in the gradient reduction."""
    start, end = distributed.shard_range(len(xb))
    if end == start:
        return xb[:1], yb[:1], 0.0
    return xb[start:end], yb[start:end], (end - start) * world / len(xb)


def _epoch_sums(total: float, correct: int, seen: int):
    """An epoch's loss sum, correct count and samples over every rank (unchanged without a group)."""
    if not distributed.is_distributed():
        return total, correct, seen
    total, correct, seen = distributed.sum_numbers(total, correct, seen)
    return total, int(correct), int(seen)


class _RateProbe:
    """Forward hooks on a model's LIF neurons that add up, while gradients are on, the spikes
    s = output / θ (θ detached: the penalty is on the spikes, not a push on θ) and the neuron-steps."""

    def __init__(self, model: nn.Module):
        from ..runtime.ops import channel_view

        self.spikes, self.steps = [], 0

        def hook(module, inputs, out):
            if torch.is_grad_enabled():
                theta = torch.as_tensor(module.theta, dtype=out.dtype, device=out.device).detach()
                self.spikes.append((out / channel_view(theta, out)).sum())
                self.steps += out.numel()

        self.handles = [m.register_forward_hook(hook) for _, m in neurons(model)]

    def take(self) -> torch.Tensor:
        """The firing rate of the forward passes since the last call, and forget them."""
        rate = torch.stack(self.spikes).sum() / self.steps
        self.spikes, self.steps = [], 0
        return rate

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _output_classes(out: torch.Tensor) -> int:
    """The number of classes of a model's output over time [T, B, C]."""
    if out.dim() != 3:
        raise SnncError(f"model: expected class scores [B, C] at each step, got {list(out.shape[1:])} per step")
    return int(out.shape[-1])


def _check_labels(labels: torch.Tensor, classes: int, epoch: int) -> None:
    """Labels must index the model's outputs (else cross-entropy fails deep inside torch)."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise SnncError(f"train: labels span {low}..{high} but the model has {classes} outputs (epoch {epoch})")


def evaluate(
    model: nn.Module, data, timesteps=None, *, batch_size: int = 256, device: str = "cpu", sequence: bool = False
) -> dict:
    """Accuracy of the time-mean output at every T in ``timesteps`` (one max(T) run), in torch.

    ``data`` and ``sequence`` as in :func:`fit`; ``timesteps`` defaults to 1, 2, 4, 8 (sequences:
    the powers of two up to their length, and the length). Returns {"samples", "accuracy": {str(T): top-1}, "firing_rate"}
    (spikes per neuron per step over the max(T) run). The compiled artifact's ``evaluate`` gives
    the same figures through the spiking runtime.
    """
    ts = None
    if timesteps is not None:
        ts = sorted({int(t) for t in ([timesteps] if np.isscalar(timesteps) else timesteps)})
        if ts[0] < 1:
            raise SnncError(f"timesteps: must be positive, got {ts[0]}")
    elif not sequence:
        ts = [1, 2, 4, 8]
    return _evaluate(model, _Source(data, "data"), ts, batch_size, torch.device(device), sequence)


def _evaluate(
    model: nn.Module, source: _Source, ts: list[int] | None, batch_size: int, dev: torch.device, sequence: bool = False
) -> dict:
    """``ts`` None: a sequence's powers of two and its length (known from the first batch)."""
    was_training = model.training
    model.eval()
    lifs = [m for _, m in neurons(model)]
    sums: dict[int, list] = {t: [] for t in ts or []}
    labels = []
    for m in lifs:
        m.spike_count, m.neuron_steps = 0, 0
    with torch.no_grad():
        for xb, yb in source.batches(batch_size):
            xb = xb.to(dev)
            if ts is None:
                ts = output_steps(int(xb.shape[1]))
                sums = {t: [] for t in ts}
            cum = run_steps(model, xb, ts[-1], sequence=sequence).float().cumsum(0)
            for t in ts:
                sums[t].append((cum[t - 1] / t).cpu().numpy())
            labels.append(yb.numpy())
    model.train(was_training)
    if not labels:
        raise SnncError(f"{source.label}: yielded no batches")
    y = np.concatenate(labels)
    neuron_steps = sum(m.neuron_steps for m in lifs)
    spikes = float(sum(m.spike_count for m in lifs))
    return {
        "samples": int(len(y)),
        "accuracy": {str(t): accuracy(np.concatenate(sums[t]), y) for t in ts},
        "firing_rate": spikes / neuron_steps if neuron_steps else 0.0,
    }
