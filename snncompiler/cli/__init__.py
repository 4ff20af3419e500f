"""The ``snnc`` command line (:mod:`.main`): argument parsing and dispatch onto the package face."""

from .main import main

__all__ = ["main"]
