"""Compile options: every default and every check, once (:class:`CompileOptions`).

``snnc.compile`` and ``snnc.calibrate`` build a :class:`CompileOptions` before any work, so a bad
value (``threshold="p200"``, ``neuron="lif", tau=1``) is refused before the statistics pass reads
the calibration data. The CLI's flags default to None and pass through here, so it never restates
a default; the passes, the runtime, the readers and writers read the defaults from this module
(the neuron model's own defaults live in :mod:`snncompiler.ir.neuron`).

Errors are :class:`~snncompiler.errors.OptionError`: worded for the library, naming the argument
(``threshold: expected max, mse or a percentile like p99.9, got 'p200'``); the CLI reports the same
detail under its flag.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import OptionError, SnncError
from .ir.neuron import (
    DEFAULT_LIF_TAU,
    ENCODINGS,
    IF_TAU,
    MAX_POPULATION,
    MAXPOOL_STRATEGIES,
    NEURONS,
    RESETS,
    V0S,
    NeuronSpec,
)
from .limits import timestep_count

#: The T a model is compiled for (and runs at unless told otherwise). Chosen by
#: benchmarks/timestep_accuracy.py (see docs/benchmarks.md: "Choosing the defaults").
DEFAULT_TIMESTEPS = 32
#: Steps simulated at once (memory does not grow with T). The default (``chunk=None``) is chosen
#: per run by :func:`snncompiler.runtime.snn.auto_chunk`: on CPU the most steps, between
#: DEFAULT_CHUNK and MAX_CHUNK, whose largest activation still fits the last-level cache (8 was
#: fastest for ResNet-18 on an AMD EPYC with 32 MiB of L3; 32 for it and the digits CNN on an
#: Intel Xeon whose L3 holds them: docs/benchmarks.md, "Speed"); DEFAULT_CHUNK on a GPU.
DEFAULT_CHUNK = 8
MAX_CHUNK = 32
#: The T at which `evaluate` and `snnc eval` report accuracy unless told otherwise.
DEFAULT_EVAL_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Samples per batch when a compiled model runs or is evaluated (`snnc eval` / `snnc run` --batch-size).
DEFAULT_BATCH_SIZE = 256
#: Calibration samples the layer-wise passes (and `snnc eval --layers`) use.
DEFAULT_LAYER_SAMPLES = 256
#: θ with no calibration or the light pipeline: a percentile of the activations.
DEFAULT_THRESHOLD = "p99.9"
#: θ for hard reset: a higher percentile keeps the per-step input small against θ, where the
#: charge hard reset discards is a smaller, more uniform share (README, "Hard reset").
HARD_RESET_THRESHOLD = "p99.99"
#: θ of the advanced pipeline: SNN Calibration's mse search.
ADVANCED_THRESHOLD = "mse"
#: Calibration pipelines (which passes each runs: :data:`snncompiler.compiler.PIPELINES`).
CALIBRATIONS = ("none", "light", "advanced")
#: The calibration a LIF network gets when none is asked for: its leak lowers every rate (no
#: spike at all below about θ/τ of input), an error that compounds layer by layer and that bias
#: calibration removes in seconds (the `make demo` digits CNN at τ = 2, T = 32: 26.0 %
#: uncalibrated, 98.9 % light; docs/benchmarks.md, "LIF neurons"). IF networks convert well
#: uncalibrated and default to none.
LIF_CALIBRATION = "light"
#: What ``substitute`` may replace HardSwish, GELU and SiLU with ("none" or None: nothing).
SUBSTITUTES = ("relu",)
#: Execution modes of the spiking runtime (``--exec``; :mod:`snncompiler.kernels.event`), here so the
#: CLI lists them without importing the kernels (and torch).
EXEC_MODES = ("dense", "event", "auto")
#: Whether the spiking runtime replays each chunk of steps as a captured CUDA graph (``--cuda-graphs``;
#: :mod:`snncompiler.runtime.cuda_graphs`): auto (on a GPU, where the graph allows it), on (an
#: error where it cannot), off.
CUDA_GRAPH_MODES = ("auto", "on", "off")
#: The options recorded in an artifact's settings (what a loaded model runs and recompiles with).
SETTING_KEYS = (
    "threshold",
    "channelwise",
    "timesteps",
    "neuron",
    "tau",
    "reset",
    "v0",
    "population",
    "maxpool",
    "encoding",
    "calibration",
    "substitute",
    "signed_spikes",
    "fuse_linear",
)

#: Fine-tuning a compiled model (:func:`snncompiler.train.finetune`, ``snnc finetune``): the T it trains
#: and is judged at, epochs, Adam learning rate, and the minibatch (also :func:`snncompiler.train.fit`'s).
FINETUNE_TIMESTEPS = 4
FINETUNE_EPOCHS = 10
FINETUNE_LR = 1e-3
TRAIN_BATCH_SIZE = 64
#: Knowledge distillation from the ANN while fine-tuning a converted model (:func:`snncompiler.train.fit`'s
#: ``teacher``): the weight of the teacher's loss against the label loss, and the softmax temperature.
DISTILL_WEIGHT = 0.5
DISTILL_TEMPERATURE = 4.0


def check_distill_weight(value) -> None:
    """``distill`` (fit, finetune, the compile pipeline) is a weight in [0, 1], checked once here."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise OptionError("distill", f"must lie in [0, 1] (the weight of the ANN teacher's loss), got {value!r}")


#: The largest seed: torch's generators take 64-bit seeds, numpy's any integer ≥ 0.
MAX_SEED = 2**63 - 1


def check_seed(value) -> int:
    """``seed`` (compile, fit, finetune, train) is an integer in [0, 2⁶³ − 1], checked once here
    (beyond it torch.manual_seed fails deep inside a run; below 0 numpy does)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED:
        raise OptionError("seed", f"must be an integer in [0, 2**63 - 1], got {value!r}")
    return int(value)


#: Integer options and their least value.
_AT_LEAST = (
    ("timesteps", 1),
    ("calib_samples", 1),
    ("iterations", 0),
    ("calib_batch", 1),
    ("calib_rounds", 1),
    ("chunk", 1),
    ("layer_samples", 1),
)


def default_calibration(neuron: str = "if") -> str:
    """The calibration pipeline used when none is given: :data:`LIF_CALIBRATION` for LIF
    neurons, none for IF."""
    return LIF_CALIBRATION if neuron == "lif" else "none"


def default_threshold(calibration: str = "none", reset: str = "soft") -> str:
    """The θ mode used when none is given: mse for the advanced pipeline, else the percentile of
    :data:`DEFAULT_THRESHOLD` (:data:`HARD_RESET_THRESHOLD` for hard reset)."""
    # light starts from the percentile: measured on the deep VGG, mse θ + bias lost to no
    # calibration at T=1 and T=32, percentile θ + bias did not (README, Benchmarks)
    if calibration == "advanced":
        return ADVANCED_THRESHOLD
    return HARD_RESET_THRESHOLD if reset == "hard" else DEFAULT_THRESHOLD


def parse_threshold(spec) -> tuple[str, float | None]:
    """A threshold mode: 'max' | 'mse' | 'pNN.N' → (kind, percentile); anything else is an
    :class:`~snncompiler.errors.OptionError` naming ``threshold``."""
    mode = str(spec).strip().lower()
    if mode in ("max", "mse"):
        return mode, None
    m = re.fullmatch(r"p(\d{1,3}(?:\.\d+)?)", mode)
    if m and 0 < float(m.group(1)) <= 100:
        return "percentile", float(m.group(1))
    raise OptionError("threshold", f"expected max, mse or a percentile like p99.9, got '{mode}'")


@dataclass(frozen=True)
class CompileOptions:
    """Every compile and calibration option with its default, checked on construction.

    ``threshold`` None picks :func:`default_threshold` and ``tau`` None the neuron's default
    (:data:`~snncompiler.ir.neuron.DEFAULT_LIF_TAU` for a LIF, IF's 0); after construction both
    hold the value used. Build one from user keywords with :meth:`from_mapping` (None means "the
    default", unknown names are refused); :meth:`as_dict` is what the passes read.
    """

    threshold: str | None = None  # max | pNN.N | mse
    channelwise: bool = False
    timesteps: int = DEFAULT_TIMESTEPS
    neuron: str = NeuronSpec.neuron
    tau: float | None = None
    reset: str = NeuronSpec.reset
    v0: str = NeuronSpec.v0
    population: int = NeuronSpec.population
    maxpool: str = MAXPOOL_STRATEGIES[0]
    strict: bool = False
    encoding: str = "direct"
    calib_samples: int = 1024
    chunk: int | None = None
    backend: str = "auto"
    calibration: str | None = None  # none | light | advanced; None: default_calibration(neuron)
    substitute: str | None = None
    signed_spikes: bool = False  # layers reading analog values read them as two neurons' spikes
    fuse_linear: bool = False  # layers reading linear functions of spikes read the spikes (composed weights)
    calib_rounds: int = 3
    iterations: int = 300
    lr: float = 1e-4
    calib_batch: int = 32
    layer_samples: int = DEFAULT_LAYER_SAMPLES
    seed: int = 0
    quiet: bool = False

    @classmethod
    def from_mapping(cls, options: Mapping) -> CompileOptions:
        """Options from keywords: None stands for the default; unknown names are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - names
        if unknown:
            raise SnncError(f"compile: unknown option(s) {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in options.items() if v is not None})

    def __post_init__(self):
        def put(name, value):  # frozen: fields are set once, here, to their checked form
            object.__setattr__(self, name, value)

        for name, low in _AT_LEAST:
            value = getattr(self, name)
            if name == "chunk" and value is None:  # chosen per run (runtime.snn.auto_chunk)
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise OptionError(name, f"must be an integer ≥ {low}, got {value!r}")
            put(name, int(value))
        put("seed", check_seed(self.seed))
        timestep_count(self.timesteps)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise OptionError("lr", f"must be a positive number, got {self.lr!r}")
        if self.calibration is None:
            put("calibration", default_calibration(self.neuron))
        if self.calibration not in CALIBRATIONS:
            raise OptionError("calibration", f"expected one of {', '.join(CALIBRATIONS)}, got '{self.calibration}'")
        if self.substitute not in (None, "none") + SUBSTITUTES:
            raise OptionError("substitute", f"expected one of {', '.join(SUBSTITUTES)}, got {self.substitute!r}")
        for name in ("signed_spikes", "fuse_linear"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, f"expected True or False, got {getattr(self, name)!r}")
        if self.encoding == "sequence":
            raise OptionError(
                "encoding",
                "'sequence': conversion calibrates on static inputs; sequence inputs "
                "[N, T, ...] are for directly trained networks (snncompiler.train)",
            )
        if self.encoding not in ENCODINGS:
            raise OptionError("encoding", f"expected direct or rate, got '{self.encoding}'")
        if self.maxpool not in MAXPOOL_STRATEGIES:
            raise OptionError("maxpool", f"expected one of {', '.join(MAXPOOL_STRATEGIES)}, got '{self.maxpool}'")
        if self.neuron != "lif" and self.tau not in (None, IF_TAU):
            raise OptionError(
                "tau", f"only meaningful for LIF neurons (neuron lif), got tau={self.tau!r} with neuron {self.neuron!r}"
            )
        spec = NeuronSpec.from_attrs(self._neuron_fields())
        put("tau", spec.tau)
        put("population", spec.population)
        if self.population > 1 and self.maxpool == "gated":
            raise OptionError(
                "population",
                "gated max pooling picks inputs by their spike counts, and a population's outputs are "
                "fractions of θ; use --maxpool rate (the default) or input",
            )
        if self.threshold is None:
            put("threshold", default_threshold(self.calibration, self.reset))
        parse_threshold(self.threshold)

    def _neuron_fields(self) -> dict:
        return {
            "neuron": self.neuron,
            "tau": self.tau,
            "reset": self.reset,
            "v0": self.v0,
            "population": self.population,
        }

    @property
    def neuron_spec(self) -> NeuronSpec:
        """The neuron model every neuron of the compiled network gets."""
        return NeuronSpec.from_attrs(self._neuron_fields())

    def as_dict(self) -> dict:
        """The options as a plain dict (what passes read and a CompiledModel keeps)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes) -> CompileOptions:
        """A copy with ``changes`` applied and checked (a None threshold or tau is chosen again)."""
        return dataclasses.replace(self, **changes)


def _recorded_defaults() -> dict:
    # the field defaults as they are, not checked: the check of timesteps reads SNNC_MAX_TIMESTEPS,
    # which may be set below the default T (then only compiling at the default T is refused)
    defaults = {f.name: f.default for f in dataclasses.fields(CompileOptions)}
    # IF's tau is what the default neuron records; a model whose settings do not name its threshold
    # records none: it is not known how θ was chosen
    defaults["tau"] = NeuronSpec.from_attrs({"neuron": defaults["neuron"]}).tau
    # an artifact that does not record its calibration was not calibrated (the LIF default is
    # newer than the settings record)
    defaults["calibration"] = "none"
    return defaults


#: Every option's default as a dict, the fallback for settings an artifact does not record
#: (``threshold`` None: chosen from the calibration and reset when compiling).
DEFAULTS = _recorded_defaults()


def setting(options: Mapping, name: str):
    """``options[name]``, or its default where absent or None: passes run on options dicts that
    name only what their caller set (a test, ``diagnostics``), and read the defaults from here."""
    value = options.get(name)
    if value is not None:
        return value
    if name == "threshold":
        return default_threshold(setting(options, "calibration"), setting(options, "reset"))
    if name == "tau":
        return NeuronSpec.from_attrs(options).tau
    return DEFAULTS[name]


__all__ = [
    "CompileOptions",
    "DEFAULTS",
    "DEFAULT_TIMESTEPS",
    "DEFAULT_CHUNK",
    "MAX_CHUNK",
    "DEFAULT_EVAL_STEPS",
    "DEFAULT_THRESHOLD",
    "HARD_RESET_THRESHOLD",
    "ADVANCED_THRESHOLD",
    "DEFAULT_LIF_TAU",
    "NEURONS",
    "RESETS",
    "V0S",
    "MAX_POPULATION",
    "MAXPOOL_STRATEGIES",
    "CALIBRATIONS",
    "SUBSTITUTES",
    "EXEC_MODES",
    "CUDA_GRAPH_MODES",
    "SETTING_KEYS",
    "FINETUNE_TIMESTEPS",
    "FINETUNE_EPOCHS",
    "FINETUNE_LR",
    "TRAIN_BATCH_SIZE",
    "DISTILL_WEIGHT",
    "DISTILL_TEMPERATURE",
    "check_distill_weight",
    "default_threshold",
    "default_calibration",
    "LIF_CALIBRATION",
    "parse_threshold",
    "setting",
]
