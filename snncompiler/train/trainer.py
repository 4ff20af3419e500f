"""Direct training of a spiking network with TET (or plain time-averaged cross-entropy).

:func:`fit` follows the TET authors' released recipe: Adam, cosine learning rate over the
epochs, the loss on the output of every step, static inputs presented at every step. Training
memory and time grow linearly with T, so TET's temporal inheritance (TIT) is simply ``fit`` at
a small T followed by a short ``fit`` of the same model at a larger T: the weights do not
depend on T.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from ..data import Dataset, validate
from ..errors import SnncError
from ..metrics import accuracy
from .loss import LOSSES, tet_loss
from .neuron import neurons, run_steps


def _dataset(data, label: str) -> Dataset:
    if isinstance(data, Dataset):
        data = (data.x, data.y)
    if not (isinstance(data, tuple) and len(data) == 2):
        raise SnncError(f"{label}: expected a Dataset or an (x, y) tuple of arrays")
    return validate(*[d.numpy() if isinstance(d, torch.Tensor) else d for d in data], label=label, require_labels=True)


def fit(model: nn.Module, train, *, timesteps: int = 4, epochs: int = 30, loss: str = "tet", lamb: float = 1e-3,
        means: float = 1.0, lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0, val=None,
        seed: int = 0, device: str = "cpu", progress: bool = True) -> dict:
    """Train ``model`` (a network with :class:`~snncompiler.train.LIF` neurons) in place.

    Args:
        train, val: a :class:`~snncompiler.data.Dataset` or an (x, y) tuple (float32 [N, ...],
            int64 [N]); ``val`` is scored after every epoch at ``timesteps``.
        timesteps: T of training.
        loss: "tet" (:func:`~.loss.tet_loss` with ``lamb`` and ``means``) or "sdt" (cross-entropy
            of the time-mean output).
        lr, weight_decay, epochs, batch_size: Adam with a cosine schedule over the epochs.
        progress: print one line per epoch to stderr.

    Returns a history: the settings and, per epoch, the mean loss, the training accuracy (of the
    time-mean output, on the batches as trained), the validation accuracy and the seconds taken.
    The settings are also kept on the model, so that :func:`~snncompiler.train.export` can record
    how it was trained.
    """
    if loss not in LOSSES:
        raise SnncError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise SnncError(f"{name}: must be a positive integer, got {value!r}")
    data = _dataset(train, "train")
    val_data = None if val is None else _dataset(val, "val")
    dev = torch.device(device)
    model.to(dev)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    criterion = (lambda out, lab: tet_loss(out, lab, lamb=lamb, means=means)) if loss == "tet" else LOSSES[loss]
    settings = {"method": loss, "timesteps": timesteps, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                "weight_decay": weight_decay, "seed": seed, "train_samples": len(data)}
    if loss == "tet":
        settings.update(lamb=lamb, means=means)
    history = {"settings": settings, "epochs": []}
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            out = run_steps(model, xb, timesteps)
            value = criterion(out, yb)
            if not torch.isfinite(value):
                raise SnncError(f"fit: the loss became {float(value)} at epoch {epoch}; lower lr (now {lr:g})")
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            total += value.item() * len(idx)
            correct += int((out.detach().mean(0).argmax(-1) == yb).sum())
            seen += len(idx)
        sched.step()
        row = {"epoch": epoch, "loss": total / seen, "train_accuracy": correct / seen,
               "seconds": time.perf_counter() - started}
        if val_data is not None:
            row["val_accuracy"] = evaluate(model, val_data, timesteps=timesteps, device=device)["accuracy"][str(timesteps)]
        history["epochs"].append(row)
        if progress:
            extra = f"  val acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
            print(f"[snnc train] epoch {epoch}/{epochs}  {loss} loss {row['loss']:.4f}  train acc "
                  f"{row['train_accuracy']:.4f}{extra}  ({row['seconds']:.1f} s)", file=sys.stderr, flush=True)
    model.eval()
    model._snnc_training = settings
    return history


def evaluate(model: nn.Module, data, timesteps=(1, 2, 4, 8), *, batch_size: int = 256, device: str = "cpu") -> dict:
    """Accuracy of the time-mean output at every T in ``timesteps`` (one max(T) run), in torch.

    Returns {"samples", "accuracy": {str(T): top-1}, "firing_rate"} (spikes per neuron per step
    over the max(T) run). The compiled artifact's ``evaluate`` gives the same figures through the
    spiking runtime.
    """
    ds = _dataset(data, "data")
    ts = sorted({int(t) for t in ([timesteps] if np.isscalar(timesteps) else timesteps)})
    if ts[0] < 1:
        raise SnncError(f"timesteps: must be positive, got {ts[0]}")
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    per_sample = _neuron_count(model, ds, dev)
    lifs = [m for _, m in neurons(model)]
    for m in lifs:
        m.spike_count = 0
    sums = {t: [] for t in ts}
    with torch.no_grad():
        for xb, _ in ds.batches(batch_size):
            out = run_steps(model, torch.from_numpy(xb).to(dev), ts[-1]).float()
            cum = out.cumsum(0)
            for t in ts:
                sums[t].append((cum[t - 1] / t).cpu().numpy())
    spikes = float(sum(m.spike_count for m in lifs))
    neuron_steps = per_sample * ts[-1] * len(ds)
    model.train(was_training)
    return {"samples": len(ds), "accuracy": {str(t): accuracy(np.concatenate(sums[t]), ds.y) for t in ts},
            "firing_rate": spikes / neuron_steps if neuron_steps else 0.0}


def _neuron_count(model: nn.Module, ds: Dataset, dev: torch.device) -> int:
    """Neurons per sample: the summed sizes of every LIF output for one input."""
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel())) for _, m in neurons(model)]
    try:
        with torch.no_grad():
            run_steps(model, torch.from_numpy(ds.x[:1]).to(dev), 1)
    finally:
        for h in hooks:
            h.remove()
    return int(sum(sizes))
