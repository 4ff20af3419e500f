"""Resource limits on what an input file may ask for, in one place.

A small file can claim a huge amount of work or memory: an .npz header with shape (1e12, ...),
a zip bomb, an artifact whose default T is 10^12, one event at coordinate (32767, 32767), a
constant ``Expand`` to 20000×20000. Each such claim is checked against a limit here *before*
anything is allocated or run, and refused with a one-line :class:`SnncError` that names the
file or flag and the environment variable that raises the limit.

=========================  =====================  ============================================
environment variable       default                what it bounds
=========================  =====================  ============================================
``SNNC_MAX_ARRAY_BYTES``   4 GiB                  one array read from a file (.npz member, from
                                                  its header and its zip entry before
                                                  decompression; event frames [N, T, 2, H, W])
``SNNC_MAX_TIMESTEPS``     65536                  T: from an artifact's settings, a NIR file's
                                                  metadata, or ``--timesteps``
``SNNC_MAX_SENSOR_SIZE``   8192                   an event sensor's height or width (largest
                                                  event coordinate + 1, or ``--sensor``)
``SNNC_MAX_CONSTANT_BYTES`` 256 MiB               one constant computed while folding an ONNX
                                                  model (checked from its shape before
                                                  evaluation)
``SNNC_MAX_CALIB_BYTES``   4 GiB                  the estimated memory of layer-wise calibration
                                                  (samples × T × activations × 4 bytes)
=========================  =====================  ============================================

Values are read from the environment at each check (so a test or a shell can change them); a
value that is not a positive integer is itself a one-line error.
"""

from __future__ import annotations

import os

from .errors import SnncError

GIB = 1 << 30

#: Every limit: environment variable → default.
DEFAULTS = {
    "SNNC_MAX_ARRAY_BYTES": 4 * GIB,
    "SNNC_MAX_TIMESTEPS": 1 << 16,
    "SNNC_MAX_SENSOR_SIZE": 8192,
    "SNNC_MAX_CONSTANT_BYTES": 256 << 20,
    "SNNC_MAX_CALIB_BYTES": 4 * GIB,
}


def limit(name: str) -> int:
    """The current value of limit ``name`` (an environment variable of :data:`DEFAULTS`)."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return DEFAULTS[name]
    try:
        value = int(text)
    except ValueError:
        try:  # "4e9" is a fine way to write a byte count
            number = float(text)
            value = int(number) if number.is_integer() else 0
        except (ValueError, OverflowError):
            value = 0
    if value < 1:
        raise SnncError(f"environment {name}={text!r}: expected a positive integer")
    return value


def human_bytes(count: int) -> str:
    """``4.0 GiB``-style text for messages."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"  # pragma: no cover


def check_array_bytes(nbytes: int, what: str) -> None:
    """Refuse an array of ``nbytes`` bytes over ``SNNC_MAX_ARRAY_BYTES`` (``what`` names it)."""
    cap = limit("SNNC_MAX_ARRAY_BYTES")
    if nbytes > cap:
        raise SnncError(
            f"{what}: would need {human_bytes(nbytes)}, over the limit of {human_bytes(cap)} "
            "(raise it with SNNC_MAX_ARRAY_BYTES)"
        )


def check_timesteps(steps: int, what: str) -> None:
    """Refuse T above ``SNNC_MAX_TIMESTEPS`` (``what`` names where T came from)."""
    cap = limit("SNNC_MAX_TIMESTEPS")
    if steps > cap:
        raise SnncError(f"{what}: {steps} timesteps is over the limit of {cap} (raise it with SNNC_MAX_TIMESTEPS)")


def timestep_count(value, option: str = "timesteps") -> int:
    """``value`` as a number of timesteps: an integer ≥ 1 (a numpy integer too; 2.5 or True is
    refused, not truncated) within ``SNNC_MAX_TIMESTEPS``; an :class:`OptionError` naming
    ``option`` otherwise (the CLI reports it under the option's flag)."""
    import numbers

    from .errors import OptionError

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise OptionError(option, f"must be an integer ≥ 1, got {value!r}")
    try:
        check_timesteps(int(value), option)
    except SnncError as exc:
        raise OptionError(option, str(exc).split(": ", 1)[1]) from None
    return int(value)


def check_sensor_size(height: int, width: int, what: str) -> None:
    """Refuse an event sensor larger than ``SNNC_MAX_SENSOR_SIZE`` on either side."""
    cap = limit("SNNC_MAX_SENSOR_SIZE")
    if height > cap or width > cap:
        raise SnncError(
            f"{what}: sensor size {height}×{width} (H×W) is over the limit of {cap} per side "
            "(raise it with SNNC_MAX_SENSOR_SIZE, or give --sensor)"
        )


def check_constant_bytes(nbytes: int, what: str) -> None:
    """Refuse a folded constant of ``nbytes`` bytes over ``SNNC_MAX_CONSTANT_BYTES``."""
    cap = limit("SNNC_MAX_CONSTANT_BYTES")
    if nbytes > cap:
        raise SnncError(
            f"{what}: a constant of {human_bytes(nbytes)} is over the limit of {human_bytes(cap)} "
            "(raise it with SNNC_MAX_CONSTANT_BYTES)"
        )


def check_calibration_bytes(nbytes: int, what: str) -> None:
    """Refuse a calibration whose estimated memory is over ``SNNC_MAX_CALIB_BYTES``."""
    cap = limit("SNNC_MAX_CALIB_BYTES")
    if nbytes > cap:
        raise SnncError(
            f"{what}: calibration would need about {human_bytes(nbytes)}, over the limit of "
            f"{human_bytes(cap)}; lower --calib-samples or --timesteps "
            "(raise the limit with SNNC_MAX_CALIB_BYTES)"
        )


__all__ = [
    "DEFAULTS",
    "limit",
    "human_bytes",
    "check_array_bytes",
    "check_timesteps",
    "check_sensor_size",
    "check_constant_bytes",
    "check_calibration_bytes",
]
