"""``python -m rtfb``: same as the ``rtfb`` command."""

from __future__ import annotations

import sys

from rtfb.cli import main

if __name__ == "__main__":
    sys.exit(main())
