"""Progress bars for long-running commands: tqdm on stderr, shown only on a terminal.

``TQDM_DISABLE=1`` (any value but empty, 0 or false) turns them off as well; output piped to a
file or read by another program never carries them.
"""

from __future__ import annotations

import os
import sys


def progress_enabled() -> bool:
    """Whether a bar would be shown: stderr is a terminal and ``TQDM_DISABLE`` is not set."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", *, enabled: bool | None = None):
    """A tqdm bar on stderr (``leave=False``: it disappears when done), disabled unless
    :func:`progress_enabled` (or ``enabled``) says otherwise. Use it as a context manager and call
    ``update(n)``; tqdm is imported only here, when a command asks for a bar."""
    from tqdm import tqdm

    on = progress_enabled() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not on, dynamic_ncols=True)
