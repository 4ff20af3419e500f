"""Which form runs a spike-driven conv/linear layer: dense, or event-driven gather, scatter or pruned.

The four forms compute the same current (within float32 summation-order error) at very
different costs, and which is cheapest depends on the layer's shape, its weight density, the
spike density of its input, the CPU and the thread count:

* ``dense``: the runtime's F.conv2d / F.linear (oneDNN): cost independent of the spikes;
* ``gather`` (kernels/csrc/event_cpu.cpp): per output pixel, the nonzero inputs its taps reach,
  outputs in registers: cost ∝ spike density × the taps that reach a real input (padding taps
  are free, so a 3×3 convolution on a 1×1 map costs 1/9 of its dense form); groups = 1;
* ``scatter``: per nonzero input, the nonzero weights it meets: cost ∝ spike density × weight
  density, the form for pruned layers at very low spike density;
* ``pruned``: per output channel, its nonzero weights, each over the whole output plane in
  vector registers: cost ∝ weight density, nearly independent of the spikes; convolutions only,
  the form for pruned layers at the spike densities of a converted network.

A :class:`Costs` per layer is fitted by a micro-benchmark on first use: each form timed on
planted spike inputs of the layer's real input shape (as many samples as a chunk feeds it, rounded
down to a power of two, from :data:`SAMPLES` up to :data:`MAX_MEASURE_ELEMENTS` inputs: a GEMM
costs less per sample on 2048 rows than on 128, and timing fewer made the event forms of a
classifier look cheaper than dense where they were not), the two spike
densities of :data:`DENSITIES`, the fastest of :data:`REPEATS` rounds that interleave every
form and density), a line in the density for the event forms and a constant for dense, per
sample. It is cached in memory and on disk
(``$SNNC_CACHE_DIR/exec_cost.json``, default ``~/.cache/snncompiler``), keyed by the layer's
geometry, weight density, input shape, the CPU, the instruction set and the thread count, so a
later run (or process) on the same machine reuses it (delete the file to measure again, e.g.
after a change of hardware the key does not capture). The scatter and pruned forms are only
measured for pruned layers (weight density ≤ :data:`SCATTER_MAX_WEIGHT_DENSITY`): with dense
weights scatter repeats the gather form's work with a read-modify-write per product, and pruned
is a plain direct convolution, and neither won a measurement.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SnncError
from ..fileio import read_regular, write_text
from ..progress import progress_enabled
from .cpu import cpu_model

FORMS = ("dense", "gather", "scatter", "pruned")
#: spike densities of the planted inputs the event forms are timed at (a line through the two)
DENSITIES = (0.02, 0.25)
SAMPLES = 128
MAX_MEASURE_ELEMENTS = 1 << 23  # inputs per planted batch (32 MiB of float32) at most
REPEATS = 5
SCATTER_MAX_WEIGHT_DENSITY = 0.5
# bump when the kernels or the measurement change enough to invalidate stored measurements
# (3: the input format; 4: fastest of interleaved rounds instead of a median of consecutive calls)
_CACHE_VERSION = 4


@dataclass(frozen=True)
class Costs:
    """Seconds per sample of each form: ``dense`` a constant, each event form a line
    ``a + b·density`` in the input's spike density (nonzero share)."""

    dense: float
    event: dict[str, tuple[float, float]]

    def predict(self, form: str, density: float) -> float:
        """Predicted seconds per sample of ``form`` at ``density``."""
        if form == "dense":
            return self.dense
        a, b = self.event[form]
        return max(0.0, a + b * density)

    def best(self, density: float, forms) -> str:
        """The cheapest of ``forms`` (those measured) at this spike density."""
        usable = [f for f in forms if f == "dense" or f in self.event]
        return min(usable, key=lambda f: self.predict(f, density))

    def only_choice(self, forms) -> str | None:
        """The form :meth:`best` picks at every density when that does not depend on the density
        (the same at 0 and at 1: the costs are lines), else None."""
        cheapest = self.best(0.0, forms)
        return cheapest if self.best(1.0, forms) == cheapest else None

    def break_even(self, form: str) -> float | None:
        """The spike density below which ``form`` beats dense: None if never, 1.0 if always."""
        a, b = self.event[form]
        if a >= self.dense:
            return None
        return 1.0 if b <= 0 else min(1.0, (self.dense - a) / b)

    def to_json(self) -> dict:
        """A JSON-able dict (the on-disk cache entry)."""
        return {"dense": self.dense, "event": {k: list(v) for k, v in self.event.items()}}

    @classmethod
    def from_json(cls, d: dict) -> Costs:
        """The inverse of :meth:`to_json`; raises on anything else (the cache entry is then remeasured)."""
        event = {str(k): (float(v[0]), float(v[1])) for k, v in d["event"].items()}
        if not set(event) <= set(FORMS[1:]):
            raise ValueError("unknown form")
        return cls(float(d["dense"]), event)


_memory: dict[str, Costs] = {}
_lock = threading.Lock()
_said: list[bool] = []


def cache_path() -> Path:
    """The on-disk cache: ``$SNNC_CACHE_DIR/exec_cost.json`` (default ``~/.cache/snncompiler``)."""
    return Path(os.environ.get("SNNC_CACHE_DIR", Path.home() / ".cache" / "snncompiler")) / "exec_cost.json"


def measure_samples(rows: int, in_shape: tuple[int, ...]) -> int:
    """Samples the micro-benchmark times for a layer that runs on ``rows`` samples at a time
    (steps × batch of a chunk): the largest power of two ≤ rows, at least :data:`SAMPLES`, at
    most what fits :data:`MAX_MEASURE_ELEMENTS` (and never below SAMPLES)."""
    per_sample = max(1, math.prod(in_shape))
    cap = max(SAMPLES, MAX_MEASURE_ELEMENTS // per_sample)
    samples = SAMPLES
    while samples * 2 <= min(rows, cap):
        samples *= 2
    return samples


def layer_key(layer, in_shape: tuple[int, ...], binary: bool = False, samples: int | None = None) -> str:
    """The cache key of a layer on inputs of per-sample shape ``in_shape`` (uint8 spikes where
    ``binary``, else float32): everything the measured costs depend on."""
    from . import event

    return json.dumps(
        [
            _CACHE_VERSION,
            cpu_model(),
            event.load().isa(),
            torch.get_num_threads(),
            torch.__version__,
            layer.kind,
            list(layer.weight_shape),
            list(layer.stride),
            list(layer.pads),
            list(layer.dilation),
            layer.groups,
            round(layer.weight_density, 2),
            list(in_shape),
            bool(binary),
            samples or SAMPLES,
        ]
    )


def _read_disk() -> dict:
    try:  # a cache that is no regular file (a FIFO would block) or unreadable: remeasure
        data = json.loads(read_regular(cache_path()).decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, SnncError):
        return {}


def _store(key: str, costs: Costs) -> None:
    """Add one entry to the on-disk cache (read, merge, atomic rewrite); a cache that cannot be
    written only costs a remeasurement next time."""
    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_disk()
        data[key] = costs.to_json()
        write_text(path, json.dumps(data, indent=0, sort_keys=True), flag="SNNC_CACHE_DIR")
    except Exception:  # a read-only home, a full disk: measuring again next time is the fallback
        pass


def _fastest_times(tasks: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each task's fastest of ``repeats`` timings, the tasks interleaved in rotating order after
    one warm-up call each (weight packing, oneDNN primitive creation, page faults). Other work
    on the machine only ever adds time, and interleaving spreads a burst of it over all tasks
    instead of one: a median of consecutive calls per task, measured while a test suite ran,
    once recorded a gather form twice as slow at 2 % spikes as it is and cached a choice of dense
    that cost the digits CNN 15 % (the fit had no slope left)."""
    for fn in tasks.values():
        fn()
    names = list(tasks)
    best = dict.fromkeys(names, math.inf)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            tasks[name]()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def measure(
    layer,
    in_shape: tuple[int, ...],
    dense_fn: Callable[[torch.Tensor], object],
    binary: bool = False,
    samples: int | None = None,
) -> Costs:
    """Fit :class:`Costs` for ``layer`` on inputs [samples, *in_shape] (default :data:`SAMPLES`; no cache). With ``binary``
    the event forms are timed on uint8 spikes, as the runtime feeds a layer whose every input is a
    neuron's binary spikes: their fixed costs differ from the float32 input's (the gather form
    reads them as masks), and timing the other format picked the wrong form on a Xeon. Dense is
    timed on float32, the values it runs on either way."""
    gen = torch.Generator().manual_seed(0)
    samples = samples or SAMPLES
    shape = (samples,) + tuple(in_shape)
    planted = {d: (torch.rand(shape, generator=gen) < d).float() for d in DENSITIES}
    event_input = planted
    scale = None
    if binary:  # a spike's value per input channel (per feature for a linear layer): 1 here
        event_input = {d: t.to(torch.uint8) for d, t in planted.items()}
        scale = torch.ones(in_shape[-1] if layer.kind == "linear" else in_shape[0])
    forms = ["gather"] if layer.gather_ok else []
    if layer.weight_density <= SCATTER_MAX_WEIGHT_DENSITY or not forms:
        forms.append("scatter")
    if layer.weight_density <= SCATTER_MAX_WEIGHT_DENSITY and layer.pruned_ok:
        forms.append("pruned")
    (d0, d1) = DENSITIES
    tasks = {"dense": lambda: dense_fn(planted[d1])}
    for form in forms:
        for d in DENSITIES:
            tasks[f"{form}@{d}"] = lambda f=form, d=d: layer(event_input[d], f, scale)
    seconds = {name: t / samples for name, t in _fastest_times(tasks, REPEATS).items()}
    event = {}
    for form in forms:
        t0, t1 = seconds[f"{form}@{d0}"], seconds[f"{form}@{d1}"]
        slope = max(0.0, (t1 - t0) / (d1 - d0))
        event[form] = (max(0.0, t0 - slope * d0), slope)
    return Costs(seconds["dense"], event)


def costs_for(
    layer,
    in_shape: tuple[int, ...],
    dense_fn: Callable[[torch.Tensor], object],
    binary: bool = False,
    rows: int = 0,
) -> Costs:
    """The :class:`Costs` of ``layer`` on per-sample inputs of ``in_shape`` (uint8 spikes where
    ``binary``), run ``rows`` samples at a time (see :func:`measure_samples`): from memory, else
    from the on-disk cache, else measured now (:func:`measure`, tens to hundreds of milliseconds
    per layer) and stored in both."""
    samples = measure_samples(rows, in_shape)
    key = layer_key(layer, in_shape, binary, samples)
    with _lock:
        if key in _memory:
            return _memory[key]
        entry = _read_disk().get(key)
        costs = None
        if entry is not None:
            try:
                costs = Costs.from_json(entry)
            except (KeyError, TypeError, ValueError, IndexError):
                costs = None
        if costs is None:
            if progress_enabled() and not _said:  # a pause of seconds on a large model: say why, once
                _said.append(True)
                print(
                    f"snnc: measuring the event kernels' costs per layer (first use on this machine; "
                    f"cached in {cache_path()})",
                    file=sys.stderr,
                )
            costs = measure(layer, in_shape, dense_fn, binary, samples)
            _store(key, costs)
        _memory[key] = costs
        return costs
