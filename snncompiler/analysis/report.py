"""``snnc report``: one self-contained HTML page about a compiled spiking model.

:func:`measure` runs the model and gathers what the page shows, reusing the measurements the
CLI prints elsewhere (:meth:`CompiledModel.evaluate`, :func:`.diagnostics.layer_errors`,
:meth:`CompiledModel.synaptic_operations`, :meth:`SpikingRunner.event_rates` and
:meth:`SpikingRunner.record`); :func:`render_html` draws the figures with matplotlib (imported
only there) and embeds them as base64 PNG ``data:`` URIs, so the page is one file with no
external reference. :data:`SECTIONS` are its headings, in order.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import torch

from ..errors import SnncError
from ..options import DEFAULT_BATCH_SIZE, DEFAULT_EVAL_STEPS, DEFAULT_LAYER_SAMPLES
from ..progress import progress_bar
from .diagnostics import layer_errors
from .metrics import ENERGY_SOURCE

#: The page's section headings, in order (the tests check every one is on the page).
SECTIONS = (
    "Accuracy against T",
    "Firing rate per layer",
    "Firing-rate histograms",
    "Spike raster",
    "Clipping and flooring error per layer",
    "Energy against T",
)

#: What :func:`measure` does, in order: the stages its progress bar counts.
STAGES = ("accuracy", "firing rates", "per-layer errors", "energy", "spike raster")

#: At most this many steps and neurons per layer are drawn in the raster.
RASTER_STEPS, RASTER_NEURONS = 64, 128


def measure(
    model,
    x,
    y,
    timesteps=None,
    *,
    analysis_samples: int = DEFAULT_LAYER_SAMPLES,
    raster_samples: int = 2,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    **overrides,
) -> dict:
    """Everything the report shows, as plain numbers (JSON-able apart from numpy arrays).

    Accuracy (SNN at every T of ``timesteps``, ANN mode) is measured on all of ``x``; per-neuron
    firing rates, per-layer clipping/flooring errors and the energy at each T on the first
    ``analysis_samples``; the spike raster on the first ``raster_samples`` (first and last
    neuron layer). ``overrides`` (backend, device, chunk, exec) go to the runtime. ``progress``:
    a bar of :data:`STAGES` on stderr, and the accuracy run's own bar (a terminal only, see
    :mod:`snncompiler.progress`)."""
    if model.sequence:
        raise SnncError("report: per-layer conversion errors need static inputs; this model takes sequences")
    neurons = model.graph.find("neuron")
    if not neurons:
        raise SnncError("report: the model has no neuron layer (nothing spikes)")
    ts = sorted({int(t) for t in (timesteps or DEFAULT_EVAL_STEPS)})
    with progress_bar(len(STAGES), "report", "stage", enabled=None if progress else False) as bar:
        return _measure(
            model, x, y, ts, bar, neurons, analysis_samples, raster_samples, batch_size, progress, overrides
        )


def _measure(model, x, y, ts, bar, neurons, analysis_samples, raster_samples, batch_size, progress, overrides) -> dict:
    """:func:`measure`'s work, advancing ``bar`` at the start of each of :data:`STAGES`."""
    stages = iter(STAGES)

    def stage() -> None:
        name = next(stages)
        if name != STAGES[0]:
            bar.update(1)
        bar.set_postfix_str(name)

    t_max = ts[-1]
    stage()
    acc = model.evaluate(x, y, ts, batch_size=batch_size, progress=progress, **overrides)
    stage()
    sub = x[:analysis_samples]
    chunk = overrides.get("chunk", model.options["chunk"])  # None: the runtime's auto_chunk
    runner = model.runner(**overrides)
    xt = model._input(sub)
    names = [n.outputs[0] for n in neurons]
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(xt), batch_size):
        for name, r in runner.event_rates(xt[start : start + batch_size], t_max, names, chunk=chunk).items():
            part = r.sum(0).cpu()
            sums[name] = sums[name] + part if name in sums else part
    rates = {n.name: (sums[n.outputs[0]] / len(xt)).flatten().numpy() for n in neurons}
    stage()
    errors = layer_errors(model, sub, t_max)
    stage()
    energy = []
    for t in ts:
        sops = model.synaptic_operations(sub, t, batch_size=batch_size, **overrides)
        energy.append(
            {
                "timesteps": t,
                "snn_pj": sops["energy_pj"]["snn"],
                "ann_pj": sops["energy_pj"]["ann"],
                "ratios": {k: e["snn_over_ann"] for k, e in sops["energy_presets_pj"].items()},
                "snn_acs": sops["snn_acs"],
                "snn_macs": sops["snn_macs"],
            }
        )
    stage()
    shown = [neurons[0]] + ([neurons[-1]] if len(neurons) > 1 else [])
    raster_t = min(t_max, RASTER_STEPS)
    traces = model.runner(**overrides).record(
        model._input(x[:raster_samples]), raster_t, [n.outputs[0] for n in shown], chunk=chunk
    )
    raster = {n.name: (traces[n.outputs[0]] != 0).flatten(2).numpy() for n in shown}  # [T, B, neurons]
    bar.update(1)
    bar.refresh()  # the last stage too, however fast it was
    return {
        "samples": acc["samples"],
        "analysis_samples": len(sub),
        "raster_samples": int(min(len(x), raster_samples)),
        "timesteps": ts,
        "snn_accuracy": acc["snn_accuracy"],
        "ann_accuracy": acc["ann_accuracy"],
        "firing_rate": acc["firing_rate"],
        "neuron_rates": rates,
        "layers": errors,
        "energy": energy,
        "raster": raster,
        "raster_steps": raster_t,
    }


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SnncError("report needs matplotlib (pip install 'snncompiler[plot]')") from exc
    return plt


def check_plotting() -> None:
    """Fail early (before any simulation) when matplotlib is missing."""
    _pyplot()


def _png(fig) -> str:
    """The figure as an ``<img>`` with a base64 PNG data URI; the figure is closed."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(data: dict, title: str = "snnc report") -> str:
    """The page for :func:`measure`'s ``data``: every heading of :data:`SECTIONS`, figures embedded."""
    plt = _pyplot()
    ts = data["timesteps"]
    parts: list[str] = []

    # accuracy against T
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(ts, [100 * data["snn_accuracy"][str(t)] for t in ts], "o-", label="SNN")
    ax.axhline(100 * data["ann_accuracy"], color="gray", ls="--", label="ANN mode")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend()
    fig.tight_layout()
    parts.append(
        f"<h2>{SECTIONS[0]}</h2><p>{data['samples']} samples; ANN mode (neurons as clip(x, 0, θ)) "
        f"{100 * data['ann_accuracy']:.2f} %; mean firing rate at T={ts[-1]} "
        f"{data['firing_rate']:.4f} spikes/neuron/step.</p>"
        + _png(fig)
        + _table(
            ["T", "SNN accuracy", "ANN mode"],
            [[t, f"{100 * data['snn_accuracy'][str(t)]:.2f} %", f"{100 * data['ann_accuracy']:.2f} %"] for t in ts],
        )
    )

    # firing rate per layer
    rates = data["neuron_rates"]
    names = list(rates)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.2))
    ax.bar(range(len(names)), [float(r.mean()) for r in rates.values()])
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("spikes / neuron / step")
    fig.tight_layout()
    parts.append(
        f"<h2>{SECTIONS[1]}</h2><p>At T={ts[-1]} on {data['analysis_samples']} samples.</p>"
        + _png(fig)
        + _table(
            ["layer", "neurons", "mean rate", "silent neurons", "max rate"],
            [
                [n, r.size, f"{r.mean():.4f}", f"{100 * float((r == 0).mean()):.1f} %", f"{r.max():.3f}"]
                for n, r in rates.items()
            ],
        )
    )

    # histograms
    cols = min(3, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.4 * rows_n), squeeze=False)
    for ax, (name, r) in zip(axes.flat, rates.items()):
        ax.hist(r, bins=30, range=(0.0, 1.0))
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("rate (spikes/step)", fontsize=7)
        ax.set_ylabel("neurons", fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    parts.append(f"<h2>{SECTIONS[2]}</h2><p>Per neuron, its rate averaged over the samples.</p>" + _png(fig))

    # raster
    raster = data["raster"]
    samples = data["raster_samples"]
    fig, axes = plt.subplots(len(raster), samples, figsize=(4 * samples, 2.6 * len(raster)), squeeze=False)
    for row, (name, spikes) in enumerate(raster.items()):
        for b in range(samples):
            s = spikes[:, b]  # [T, neurons]
            active = np.flatnonzero(s.any(0))[:RASTER_NEURONS]
            t_idx, n_idx = np.nonzero(s[:, active])
            ax = axes[row, b]
            ax.scatter(t_idx, n_idx, marker="|", s=12, linewidths=0.8, color="black")
            ax.set_xlim(-0.5, data["raster_steps"] - 0.5)
            ax.set_title(f"{name}, sample {b}", fontsize=8)
            ax.set_xlabel("step", fontsize=7)
            ax.set_ylabel("neuron (active ones)", fontsize=7)
    fig.tight_layout()
    parts.append(
        f"<h2>{SECTIONS[3]}</h2><p>The first {data['raster_steps']} steps of {samples} sample(s), at most "
        f"{RASTER_NEURONS} of the neurons that fire, first and last neuron layer.</p>" + _png(fig)
    )

    # clipping / flooring
    layers = data["layers"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(layers) + 2), 3.2))
    pos = np.arange(len(layers))
    ax.bar(pos - 0.2, [r["clipping_error"] for r in layers], 0.4, label="clipping")
    ax.bar(pos + 0.2, [r["flooring_error"] for r in layers], 0.4, label="flooring")
    ax.set_xticks(pos, [r["layer"] for r in layers], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("mean squared error")
    ax.legend()
    fig.tight_layout()
    parts.append(
        f"<h2>{SECTIONS[4]}</h2><p>At T={ts[-1]} on {data['analysis_samples']} samples: clipping "
        "E[(a − min(a, θ))²], flooring E[(min(a, θ) − s̄)²] (every other mismatch included).</p>"
        + _png(fig)
        + _table(
            ["layer", "θ (mean)", "clipping", "flooring", "firing rate", "cosine(a, s̄)"],
            [
                [
                    r["layer"],
                    f"{r['theta']:.4g}",
                    f"{r['clipping_error']:.4g}",
                    f"{r['flooring_error']:.4g}",
                    f"{r['firing_rate']:.4f}",
                    f"{r['cosine']:.4f}",
                ]
                for r in layers
            ],
        )
    )

    # energy
    energy = data["energy"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(ts, [e["snn_pj"] / 1e6 for e in energy], "o-", label="SNN (float32)")
    ax.axhline(energy[0]["ann_pj"] / 1e6, color="gray", ls="--", label="ANN (float32)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("energy per sample (µJ)")
    ax.legend()
    fig.tight_layout()
    presets = list(energy[0]["ratios"])
    parts.append(
        f"<h2>{SECTIONS[5]}</h2><p>Synaptic operations on {data['analysis_samples']} samples priced per "
        f"operation ({html.escape(ENERGY_SOURCE)}).</p>"
        + _png(fig)
        + _table(
            ["T", "SNN ACs", "SNN MACs", "SNN µJ", "ANN µJ"] + [f"SNN/ANN {p}" for p in presets],
            [
                [
                    e["timesteps"],
                    f"{e['snn_acs']:,.0f}",
                    f"{e['snn_macs']:,.0f}",
                    f"{e['snn_pj'] / 1e6:.4g}",
                    f"{e['ann_pj'] / 1e6:.4g}",
                ]
                + [f"{e['ratios'][p]:.3f}" for p in presets]
                for e in energy
            ],
        )
    )

    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        + html.escape(title)
        + f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def build_report(model, x, y, timesteps=None, *, title: str = "snnc report", **options) -> str:
    """:func:`measure` then :func:`render_html`: the page as a string (matplotlib checked first)."""
    check_plotting()
    return render_html(measure(model, x, y, timesteps, **options), title)
