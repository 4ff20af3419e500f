"""The spiking-ONNX artifact format, described once: its operator domain and versions, the
metadata a writer records and a reader checks.

An artifact is standard ONNX at :data:`TARGET_OPSET` plus ``Neuron`` nodes in the
:data:`SNN_DOMAIN` domain (read by :mod:`.onnx.converters.snn`, written by :mod:`.onnx.writer`)
and these model-level metadata entries:

- ``snncompiler.artifact``: the format version, :data:`ARTIFACT_VERSION` (required);
- ``snncompiler.version``: the snncompiler that wrote it;
- ``snncompiler.settings``: JSON object of the runtime settings (keys: options.SETTING_KEYS);
- ``snncompiler.timesteps``: the default T (also among the settings);
- ``snncompiler.report``: JSON object, the compile report (informational);
- ``snncompiler.fixed_batch``: "1" when the graph runs one sample at a time.

:func:`artifact_metadata` is what a writer records; :func:`read_artifact` checks what a reader
found and returns the settings and report (data: the package face builds the model object).
"""

from __future__ import annotations

import json

import torch

from .._version import __version__
from ..errors import SnncError
from ..ir import Graph, check_finite_parameters
from ..ir.neuron import ENCODINGS, MAXPOOL_STRATEGIES, pool_strategy
from ..limits import check_timesteps
from ..options import DEFAULTS, SETTING_KEYS

#: Every model is converted to this opset so that each converter sees one form of its op, and
#: artifacts are written at it. 21 is the newest opset the version converter reaches from every
#: older one (Gelu exists only from 20).
TARGET_OPSET = 21
#: The domain of spiking (neuron) nodes in compiled artifacts.
SNN_DOMAIN = "snncompiler"
#: The version of that domain's operators (Neuron) that this snncompiler writes and reads.
SNN_DOMAIN_VERSION = 1
#: The artifact format (metadata ``snncompiler.artifact``) this snncompiler writes and reads.
ARTIFACT_VERSION = "1"

VERSION_KEY = "snncompiler.artifact"
WRITER_KEY = "snncompiler.version"
SETTINGS_KEY = "snncompiler.settings"
TIMESTEPS_KEY = "snncompiler.timesteps"
REPORT_KEY = "snncompiler.report"


def artifact_metadata(settings: dict, report: dict, *, fixed_batch_key: str | None = None) -> dict[str, str]:
    """The metadata entries of an artifact with these runtime ``settings`` and compile ``report``
    (the per-layer thresholds are left out of the report: they are in the neuron nodes)."""
    meta = {
        WRITER_KEY: __version__,
        VERSION_KEY: ARTIFACT_VERSION,
        SETTINGS_KEY: json.dumps(settings),
        TIMESTEPS_KEY: str(settings["timesteps"]),
        REPORT_KEY: json.dumps({k: v for k, v in report.items() if k != "thresholds"}, default=str),
    }
    if fixed_batch_key is not None:
        meta[fixed_batch_key] = "1"
    return meta


def _metadata_object(graph: Graph, key: str) -> dict:
    """Metadata ``key`` of an artifact parsed as a JSON object ({} when absent)."""
    raw = graph.metadata.get(key)
    if raw is None:
        return {}
    where = graph.metadata.get("source_file", "model")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SnncError(f"{where}: metadata '{key}' is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise SnncError(f"{where}: metadata '{key}' must be a JSON object, got {type(value).__name__}")
    return value


def _check_settings(settings: dict, where: str) -> dict:
    """The recorded settings the runtime acts on, checked: a damaged value is an error naming it."""
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise SnncError(
            f"{where}: metadata 'snncompiler.settings': unknown key(s) "
            f"{', '.join(repr(k) for k in unknown)} (known: {', '.join(SETTING_KEYS)})"
        )

    def bad(key, expected):
        return SnncError(f"{where}: metadata 'snncompiler.settings': '{key}' must be {expected}, got {settings[key]!r}")

    if "timesteps" in settings and not (
        isinstance(settings["timesteps"], int)
        and not isinstance(settings["timesteps"], bool)
        and settings["timesteps"] >= 1
    ):
        raise bad("timesteps", "a positive integer")
    if "timesteps" in settings:
        check_timesteps(settings["timesteps"], f"{where}: metadata 'snncompiler.settings': 'timesteps'")
    if "maxpool" in settings and settings["maxpool"] not in MAXPOOL_STRATEGIES:
        raise bad("maxpool", f"one of {', '.join(MAXPOOL_STRATEGIES)}")
    if "encoding" in settings and settings["encoding"] not in ENCODINGS:
        raise bad("encoding", f"one of {', '.join(ENCODINGS)}")
    return settings


def _check_neuron_parameters(graph: Graph, where: str) -> None:
    """θ and the input gain (one value or one per channel) and v_init (broadcast onto a sample) of every neuron fit
    its input, where the file records that input's shape: otherwise the first run would fail
    inside the kernel op with a message about v0 that names neither the file nor the node."""
    for node in graph.find("neuron"):
        value = graph.values.get(node.inputs[0])
        shape = None if value is None or value.shape is None else tuple(value.shape)
        if shape is None or len(shape) < 2:
            continue
        for key in ("theta", "gain"):
            count = node.params[key].numel() if key in node.params else 1
            if count not in (1, shape[1]):
                raise SnncError(
                    f"{where}: {node.where}: {key} has {count} values; its input "
                    f"{list(shape)} takes one, or one per channel ({shape[1]})"
                )
        v_init = node.params.get("v_init")
        if v_init is not None:
            try:
                fits = torch.broadcast_shapes(tuple(v_init.shape), shape[1:]) == shape[1:]
            except RuntimeError:
                fits = False
            if not fits:
                raise SnncError(
                    f"{where}: {node.where}: v_init of shape {list(v_init.shape)} does not fit "
                    f"its input's sample shape {list(shape[1:])}"
                )


def read_artifact(graph: Graph) -> tuple[dict, dict]:
    """An artifact's settings and compile report from its IR's metadata, checked: an artifact of
    another format version or with damaged metadata or neuron parameters is a one-line error
    naming the file. Stateful max-pooling strategies are restored on the graph's MaxPool nodes."""
    where = graph.metadata.get("source_file", "model")
    version = graph.metadata.get(VERSION_KEY)
    if version is None:
        raise SnncError(
            f"{where}: metadata 'snncompiler.artifact' (the format version) is missing; "
            "not an artifact written by snnc compile"
        )
    if version != ARTIFACT_VERSION:
        raise SnncError(
            f"{where}: artifact format {version!r} is not the one this snncompiler reads "
            f"({ARTIFACT_VERSION!r}); recompile the model with this version"
        )
    steps = graph.metadata.get(TIMESTEPS_KEY)  # the default T, also in the settings
    if steps is not None and not (steps.isdigit() and int(steps) >= 1):
        raise SnncError(f"{where}: metadata 'snncompiler.timesteps' must be a positive integer, got {steps!r}")
    if steps is not None:
        check_timesteps(int(steps), f"{where}: metadata 'snncompiler.timesteps'")
    settings = _check_settings(_metadata_object(graph, SETTINGS_KEY), where)
    report = _metadata_object(graph, REPORT_KEY)
    _check_neuron_parameters(graph, where)
    check_finite_parameters(graph, where)
    strategy = settings.get("maxpool", DEFAULTS["maxpool"])
    if strategy in ("gated", "rate"):  # standard MaxPool nodes carry no strategy: restore the stateful ones
        for mp in graph.find("maxpool"):
            mp.attrs["spiking"] = pool_strategy(strategy, mp.attrs)
    return settings, report
