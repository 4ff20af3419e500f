"""The trainable spiking neuron: a drop-in for ``nn.ReLU`` that runs over time through the kernel op.

A network for direct training is an ordinary torch module in which :class:`LIF` takes the
place of each ReLU. :func:`run_steps` feeds it T copies of the input stacked on the batch axis
([T·B, ...]), so convolutions, BatchNorm, pooling and linear layers run once on the whole
time-flattened batch (SpikingJelly's ``SeqToANNContainer`` idea, with no wrapper per layer),
and each LIF regroups its input as [T, B·...] and calls
:func:`snncompiler.kernels.neuron_multistep` with a surrogate gradient: the C++ kernel's fused
forward and backward on the CPU, Triton or CUDA on a GPU.

The neuron settings use the artifact's own vocabulary (neuron, tau, reset, v0; see
:class:`snncompiler.ir.neuron.NeuronSpec`), so a trained network exports to the same
``snncompiler::Neuron`` nodes that conversion emits and runs on the same runtime.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SnncError
from ..ir.neuron import DEFAULT_LIF_TAU, IF_TAU, NeuronSpec
from ..kernels import population_multistep
from ..kernels.surrogate import resolve
from ..runtime.ops import channel_view


class LIF(nn.Module):
    """Leaky integrate-and-fire (or IF) neurons over T steps of a time-flattened batch.

    Defaults are TET's ``LIFSpike`` (Deng et al., ICLR 2022): membrane decay 0.5 per step
    (``tau=2``: decay = 1 - 1/tau), threshold 1, hard reset to 0, membrane starting at 0, and
    the triangle surrogate of width 1 (TET's ``ZIF`` with γ = 1). The spike test is ``h >= θ``
    (TET's is ``h > θ``; they differ only when h equals θ exactly).

    Args:
        neuron: "lif" or "if" (no leak).
        tau: LIF time constant, > 1 (decay = 1 - 1/tau).
        theta: firing threshold: a positive float, or a 1-D tensor of C per-channel thresholds
            (axis 1 of the activation, as the runtime's channel-wise θ); the output is θ·s.
        learn_theta: train θ too (a parameter, by the op's ∂/∂θ through the surrogate).
        reset: "hard" (to 0) or "soft" (subtract θ).
        v0: "zero" or "half" (θ/2) initial membrane.
        surrogate, alpha: surrogate derivative ("triangle", "atan", "sigmoid"; alpha None =
            the surrogate's default, 1.0 for the triangle).
        detach_reset: do not backpropagate through the spike in the reset.
        backend: kernel backend of :func:`~snncompiler.kernels.neuron_multistep`.
        v_init: a fixed offset added to the initial membrane, one value per neuron of a sample
            (potential calibration's, kept when a calibrated model is fine-tuned).
        population: B neurons per unit, started θ/B apart, whose mean spike is the unit's output
            (see :class:`~snncompiler.ir.neuron.NeuronSpec`; a converted model's, kept when fine-tuned).
    """

    def __init__(
        self,
        *,
        neuron: str = "lif",
        tau: float = DEFAULT_LIF_TAU,
        theta: float | torch.Tensor = 1.0,
        learn_theta: bool = False,
        reset: str = "hard",
        v0: str = "zero",
        surrogate: str = "triangle",
        alpha: float | None = 1.0,
        detach_reset: bool = False,
        backend: str = "auto",
        v_init: torch.Tensor | None = None,
        population: int = 1,
    ):
        super().__init__()
        self.spec = NeuronSpec.from_attrs(
            {
                "neuron": neuron,
                "tau": tau if neuron == "lif" else IF_TAU,
                "reset": reset,
                "v0": v0,
                "population": population,
            }
        )
        self.attrs = self.spec.attrs()
        if isinstance(theta, torch.Tensor):
            theta = theta.detach().to(torch.float32).clone()
            if theta.dim() > 1 or theta.numel() == 0 or not bool((theta > 0).all()):
                raise SnncError(
                    f"theta: a tensor θ must be 1-D (one per channel) and positive, got shape {list(theta.shape)}"
                )
        elif not (isinstance(theta, (int, float)) and not isinstance(theta, bool) and float(theta) > 0):
            raise SnncError(f"theta: must be a positive number or a 1-D tensor, got {theta!r}")
        if learn_theta:
            self.theta = nn.Parameter(torch.as_tensor(theta, dtype=torch.float32).clone())
        elif isinstance(theta, torch.Tensor):
            self.register_buffer("theta", theta)
        else:
            self.theta = float(theta)  # a float is passed as it is: the op caches scalar tensors
        if v_init is None:
            self.v_init = None
        else:
            self.register_buffer("v_init", v_init.detach().to(torch.float32).clone())
        self.surrogate, self.alpha = surrogate, resolve(surrogate, alpha)[1]
        self.detach_reset, self.backend = bool(detach_reset), backend
        self.timesteps: int | None = None  # set by run_steps for each forward pass
        # spikes and neuron-steps under no_grad since the last reset (firing-rate reports)
        self.spike_count, self.neuron_steps = 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T·B, ...] (T copies of the batch, time-major) → spikes θ·s of the same shape."""
        steps = self.timesteps
        if steps is None:
            raise SnncError(
                "LIF: the time axis is unknown; run the network through "
                "snncompiler.train.run_steps(model, x, timesteps), which sets it"
            )
        if x.shape[0] % steps:
            raise SnncError(
                f"LIF: the input's first axis ({x.shape[0]}) is not a multiple of T={steps}; "
                "the network must keep the time-flattened batch axis up to every LIF"
            )
        seq = x.reshape((steps, x.shape[0] // steps) + tuple(x.shape[1:]))
        theta = self.theta
        if isinstance(theta, torch.Tensor):
            if theta.numel() > 1 and (x.dim() < 2 or x.shape[1] != theta.numel()):
                raise SnncError(
                    f"LIF: {theta.numel()} per-channel thresholds, but the input has "
                    f"{x.shape[1] if x.dim() > 1 else 'no'} channels (axis 1)"
                )
            theta = channel_view(theta, seq[0])
        counting = not torch.is_grad_enabled()  # the C++ kernel counts for free; training skips it
        v0 = self.spec.start_potential(theta, seq.dim() - 1, self.v_init)  # as the runtime starts it
        result = population_multistep(
            seq,
            v0,
            theta,
            self.spec.population,
            decay=self.spec.decay,
            reset=self.spec.reset,
            surrogate=self.surrogate,
            alpha=self.alpha,
            detach_reset=self.detach_reset,
            backend=self.backend,
            return_count=counting,
        )
        if counting:
            self.spike_count = self.spike_count + result[2]  # a tensor: no device sync per layer
            self.neuron_steps += seq.numel() * self.spec.population
        return result[0].reshape(x.shape)

    def threshold(self) -> torch.Tensor:
        """θ as the artifact stores it: a float32 scalar or [C] tensor on the CPU, detached."""
        return torch.as_tensor(self.theta, dtype=torch.float32).detach().cpu().clone()

    def extra_repr(self) -> str:
        a = self.attrs
        tau = f", tau={a['tau']:g}" if a["neuron"] == "lif" else ""
        theta = self.threshold()
        shown = f"{float(theta):g}" if theta.numel() == 1 else f"[{theta.numel()} channels]"
        learned = " (learned)" if isinstance(self.theta, nn.Parameter) else ""
        return (
            f"neuron={a['neuron']}{tau}, theta={shown}{learned}, reset={a['reset']}, v0={a['v0']}, "
            f"surrogate={self.surrogate}({self.alpha:g})"
            + (f", population={self.spec.population}" if self.spec.population > 1 else "")
        )


def neurons(model: nn.Module) -> list[tuple[str, LIF]]:
    """The LIF modules of a network with their qualified names, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LIF)]


#: The smallest value training leaves a learned θ at. A θ driven to zero or below makes a neuron
#: fire at every step whatever its input (and a compiled artifact refuses it: fine-tuning the
#: random ResNet-18 of the benchmarks did this at lr 1e-3); held here, the neuron's spikes carry
#: almost nothing instead, as a dead ReLU's output does, and training goes on.
THETA_FLOOR = 1e-6


def keep_thresholds_positive(model: nn.Module) -> None:
    """Clamp every learned θ of ``model``'s LIF layers to at least :data:`THETA_FLOOR` (run after
    each optimiser step; NaN stays NaN, for the loss check to report)."""
    with torch.no_grad():
        for _, m in neurons(model):
            if isinstance(m.theta, nn.Parameter):
                m.theta.clamp_(min=THETA_FLOOR)


def run_steps(
    model: nn.Module, x: torch.Tensor, timesteps: int | None = None, *, sequence: bool = False
) -> torch.Tensor:
    """Run a network with LIF neurons for ``timesteps`` steps; returns the output at every step, [T, B, ...].

    A static input x [B, ...] is presented unchanged at every step (direct coding, as the compiled
    runtime does). With ``sequence`` x is [B, T_in, ...], one frame per step (event frames, time
    series), and ``timesteps`` (default T_in) takes the first frames. TET supervises each step's
    output; the model's prediction is the mean over steps.
    """
    if sequence:
        if x.dim() < 2:
            raise SnncError(f"x: a sequence input must be [B, T, ...], got shape {list(x.shape)}")
        timesteps = x.shape[1] if timesteps is None else timesteps
    if not isinstance(timesteps, int) or timesteps < 1:
        raise SnncError(f"timesteps: must be a positive integer, got {timesteps!r}")
    if sequence and timesteps > x.shape[1]:
        raise SnncError(f"timesteps: {timesteps} steps asked for, but the input sequence has {x.shape[1]}")
    lifs = neurons(model)
    if not lifs:
        raise SnncError("model: has no snncompiler.train.LIF neuron (put one where the ANN has a ReLU)")
    for _, m in lifs:
        m.timesteps = timesteps
    batch = x.shape[0]
    if sequence:
        frames = x[:, :timesteps].transpose(0, 1)
    else:
        frames = x.unsqueeze(0).expand((timesteps,) + tuple(x.shape))
    seq = frames.reshape((timesteps * batch,) + tuple(frames.shape[2:]))
    try:
        out = model(seq)
    finally:
        for _, m in lifs:
            m.timesteps = None
    if out.shape[0] != timesteps * batch:
        raise SnncError(f"model: its output's first axis is {out.shape[0]}, expected T·B = {timesteps * batch}")
    return out.reshape((timesteps, batch) + tuple(out.shape[1:]))
