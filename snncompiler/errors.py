"""The one exception type users see.

Every failure caused by the user's input (a file, an argument, a model) is raised as
:class:`SnncError` with a one-line message that names the file, node or argument at
fault. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class SnncError(Exception):
    """A user-facing error: one line, naming what is wrong and where."""

    exit_code = 2

    def __init__(self, message: str):
        # Collapse to one line so that nested library messages cannot break the contract.
        super().__init__(" ".join(str(message).split()))


class UnsupportedOpError(SnncError):
    """An ONNX operator with no converter (or a core op the requested mode cannot run)."""


class OptionError(SnncError):
    """An option (a compile setting, a function argument) with a value that cannot be used.

    ``option`` is its library name (``calib_samples``) and ``detail`` what is wrong; the message
    names the argument (``calib_samples: must be an integer ≥ 1, got 0``), and the CLI, which
    knows the option as a flag, reports the same detail under it (``--calib-samples: ...``)."""

    def __init__(self, option: str, detail: str):
        self.option, self.detail = option, " ".join(str(detail).split())
        super().__init__(f"{option}: {self.detail}")

    @property
    def flag(self) -> str:
        """The command-line flag of this option."""
        return "--" + self.option.replace("_", "-")
