"""``python -m snncompiler.cli``: the same as the ``snnc`` command."""

import sys

from .main import main

sys.exit(main())
