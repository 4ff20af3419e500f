"""The neuron model, once: :class:`NeuronSpec` (if | lif, tau, reset, v0, population) and the
vocabularies of spiking execution (input encodings, max-pooling strategies).

Every stage that reads or writes a neuron goes through here: neuronize records a spec on each
neuron node, the artifact and NIR readers check the attributes they read with
:meth:`NeuronSpec.from_attrs`, the runtime and training take the membrane decay and the initial
potential from it, and the NIR writer turns the decay back into a time constant. So the default
LIF time constant, what an absent attribute means and how tau maps to a decay exist in one place.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

from ..errors import OptionError, SnncError

NEURONS = ("if", "lif")
RESETS = ("soft", "hard")
#: Initial membrane potential: θ/2 ("half", rounds the rate to nearest) or 0 ("zero", floors it).
V0S = ("half", "zero")
#: The time constant a LIF neuron gets when none is given (decay 0.5 per step, TET's ``LIFSpike``).
DEFAULT_LIF_TAU = 2.0
#: The tau recorded on an IF neuron: it has no leak, so the value only marks "not a LIF".
IF_TAU = 0.0

#: Input encodings: the same x at every step, Bernoulli spikes with p = x, or x [B, T, ...] with its own
#: time axis ("sequence": event frames, time series; one step per frame).
ENCODINGS = ("direct", "rate", "sequence")
#: Spiking max pooling strategies (see :mod:`snncompiler.passes.neuronize`); the first is the default.
MAXPOOL_STRATEGIES = ("rate", "gated", "input", "output")


def pool_strategy(strategy: str, pool_attrs: dict) -> str:
    """The spiking max pooling one pool runs under the model's ``strategy``. ``gated`` passes
    the spikes of the input with the highest running count in each window; for a global pool
    (one window over the whole plane) that input is not implemented and the pool fell back to
    the max of the spikes at each step (biased up by most of the output), so it takes ``rate``,
    the unbiased strategy, instead."""
    return "rate" if strategy == "gated" and pool_attrs.get("global") else strategy


#: The most neurons one unit may be split into (``population``): past this the B-fold neuron work
#: and spike traffic cost more than running at B·T steps would.
MAX_POPULATION = 64

#: The node attributes a spec is written to and read from.
ATTRIBUTES = ("neuron", "tau", "reset", "v0", "population")


@dataclass(frozen=True)
class NeuronSpec:
    """One neuron population's model: IF or LIF (membrane decay 1 - 1/tau per step), soft reset
    (subtract θ) or hard reset (to 0), initial potential θ/2 or 0, and ``population`` B: each
    unit (a ReLU of the ANN) is B neurons that see the same input and start staggered by θ/B,
    and the unit's output is the mean of their spikes.

    Why B neurons: one IF neuron run for T steps emits 0…T spikes, so its rate takes T + 1
    values; B neurons started at θ·(j + ½)/B (v0 "half"; θ·j/B for "zero") round the rate to
    the nearest of T·B + 1 values (Hermite's identity: Σ_j ⌊y + j/B⌋ = ⌊B·y⌋ for a constant
    input), the resolution of B·T steps at T steps' latency, for B-fold neuron updates and up to
    B-fold spikes. The levels a unit can express are the same as a burst neuron's that may emit
    up to B spikes per step (Li & Zeng, IJCAI 2022), built from ordinary one-spike neurons, so
    every kernel runs it unchanged. B = 1 is the plain neuron. (The identity is exact for IF
    neurons with soft reset; with a leak or hard reset the offsets still stagger the B neurons'
    spikes in time, and the resolution gain is approximate.)

    Build it with :meth:`from_attrs`, which fills in the defaults and checks every field; the
    constructor takes the fields as they are."""

    neuron: str = "if"
    tau: float = IF_TAU
    reset: str = "soft"
    v0: str = "half"
    population: int = 1

    @classmethod
    def from_attrs(cls, attrs, where: str | None = None) -> NeuronSpec:
        """The spec described by a mapping with (some of) the keys neuron, tau, reset, v0,
        population; other keys are ignored. An absent (or None) value takes the default: IF, soft
        reset, v0 = θ/2, population 1, and tau = :data:`DEFAULT_LIF_TAU` for a LIF,
        :data:`IF_TAU` for an IF neuron.

        A bad value is an :class:`~snncompiler.errors.OptionError` naming the setting (the
        argument), or with ``where`` (a file and node) an error naming it as an attribute there."""

        def bad(key: str, detail: str) -> SnncError:
            return OptionError(key, detail) if where is None else SnncError(f"{where}: attribute '{key}': {detail}")

        def given(key):
            value = attrs.get(key)
            return getattr(cls, key) if value is None else value

        neuron = given("neuron")
        if neuron not in NEURONS:
            raise bad("neuron", f"expected if or lif, got '{neuron}'")
        reset = given("reset")
        if reset not in RESETS:
            raise bad("reset", f"expected soft or hard, got '{reset}'")
        v0 = given("v0")
        if v0 not in V0S:
            raise bad("v0", f"expected half or zero, got '{v0}'")
        raw = attrs.get("tau")
        if raw is None:
            raw = DEFAULT_LIF_TAU if neuron == "lif" else IF_TAU
        try:
            tau = float(raw)
        except (TypeError, ValueError):
            raise bad("tau", f"expected a number, got {raw!r}") from None
        if not math.isfinite(tau):
            raise bad("tau", f"must be finite, got {tau}")
        if neuron == "lif" and tau <= 1.0:
            raise bad("tau", f"must be > 1 for LIF (decay = 1 - 1/tau), got {tau}")
        population = given("population")
        if (
            isinstance(population, bool)
            or not isinstance(population, numbers.Integral)
            or not 1 <= population <= MAX_POPULATION
        ):
            raise bad("population", f"expected an integer from 1 to {MAX_POPULATION}, got {population!r}")
        return cls(neuron, tau, reset, v0, int(population))

    def attrs(self) -> dict:
        """The spec as node attributes (what the artifact's Neuron nodes record; ``population``
        only when above 1, so a plain neuron's artifact is what it was before the attribute)."""
        attrs = {"neuron": self.neuron, "tau": self.tau, "reset": self.reset, "v0": self.v0}
        if self.population > 1:
            attrs["population"] = self.population
        return attrs

    @property
    def decay(self) -> float:
        """Membrane decay per step: 1 for IF, 1 - 1/tau for LIF."""
        return 1.0 - 1.0 / self.tau if self.neuron == "lif" else 1.0

    @property
    def leaks(self) -> bool:
        """Whether the membrane decays between steps (LIF): charge given to it is lost over about
        τ steps, which the calibration passes must allow for (compiler.calibration_passes,
        weight_calibration.fits_if_rate)."""
        return self.decay < 1.0

    @staticmethod
    def tau_of_decay(decay: float) -> float:
        """The time constant (in steps) of a LIF with membrane decay ``decay`` (the inverse of :attr:`decay`)."""
        return 1.0 / (1.0 - decay)

    def initial_potential(self, theta):
        """v0 before any per-neuron offset: θ/2 ("half") or 0 ("zero"), for a θ tensor or float
        (a float stays a float: the kernel op caches scalar tensors itself)."""
        if self.v0 == "half":
            return theta * 0.5
        import torch  # here, not at module level: the CLI's parser reads this module without torch

        return torch.zeros_like(theta) if isinstance(theta, torch.Tensor) else 0.0

    def start_potential(self, theta, ndim: int, v_init=None):
        """The membrane every neuron starts from, as the runtime, ``to_torch`` and training all
        set it: :meth:`initial_potential` (θ/2 or 0), plus potential calibration's per-neuron
        ``v_init`` if any, plus :meth:`population_offsets` for a population, which puts the B
        neurons on a new leading axis ([B, 1, …]; ``ndim``: the rank of one step's input)."""
        v = self.initial_potential(theta)
        if v_init is not None:
            v = v + v_init
        offsets = self.population_offsets(theta, ndim)
        return v if offsets is None else v + offsets

    def population_offsets(self, theta, ndim: int):
        """What each of the B neurons of a unit adds to :meth:`initial_potential`: θ·(j/B + h/B - h)
        for j = 0…B-1 (h = ½ for v0 "half", 0 for "zero"), so neuron j starts at θ·(j + h)/B.
        A [B, 1, …] tensor (``ndim`` ones: the rank of one step's input) that broadcasts against
        θ; None for a plain neuron."""
        if self.population == 1:
            return None
        import torch

        half = 0.5 if self.v0 == "half" else 0.0
        b = self.population
        theta = torch.as_tensor(theta, dtype=torch.float32)
        # made on θ's device: a host-to-device copy would stall a GPU and cannot be captured in a CUDA graph
        steps = (torch.arange(b, dtype=torch.float32, device=theta.device) + half) / b - half
        return steps.reshape((b,) + (1,) * ndim) * theta

    def rate_levels(self, timesteps: int) -> int:
        """How many steps of one plain neuron give this unit's rate resolution in ``timesteps``
        steps: T·B (the quantiser the threshold search and weight calibration fit against)."""
        return int(timesteps) * self.population


@functools.cache
def population_inverse(population: int) -> float:
    """float32(1/B), one float32 division (1/B in double, then rounded, could round twice): a
    population unit whose B neurons fire k spikes at a step outputs k·(θ·float32(1/B)), two
    float32 products that the C++ kernel, the other backends (kernels/op.py, population_output)
    and the standard-ONNX export all compute alike."""
    import numpy as np  # here, as torch elsewhere: the CLI's parser reads this module

    return float(np.float32(1.0) / np.float32(population))


def binary_outputs(node) -> bool:
    """Whether a neuron node's outputs are 0 or θ (one neuron per unit), so that counting its
    nonzero outputs counts its spikes; a population's are k·θ/B."""
    return NeuronSpec.from_attrs(node.attrs).population == 1


def time_invariant(graph, sequence: bool) -> tuple[set[str], set[str]]:
    """The values of a spiking run that are the same at every step: a directly encoded input
    (not a ``sequence``) and what is computed from it and constants alone, no neuron between;
    and, among them, the constants (independent of the input, so without a per-sample axis).
    The spiking runner, the torch module and the standard-ONNX export pass the constants to
    broadcasting ops without expanding them over the steps folded into axis 0."""
    static: set[str] = set() if sequence else {graph.inputs[0].name}
    constant: set[str] = set()
    for node in graph.nodes:
        if node.op != "neuron" and all(i in static for i in node.inputs):
            static.update(node.outputs)
            if all(i in constant for i in node.inputs):
                constant.update(node.outputs)
    return static, constant


__all__ = [
    "population_inverse",
    "binary_outputs",
    "time_invariant",
    "NeuronSpec",
    "NEURONS",
    "RESETS",
    "V0S",
    "DEFAULT_LIF_TAU",
    "IF_TAU",
    "ENCODINGS",
    "MAXPOOL_STRATEGIES",
    "ATTRIBUTES",
    "MAX_POPULATION",
]
