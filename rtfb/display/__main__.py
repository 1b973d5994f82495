"""``python -m rtfb.display``: the display command line."""

import sys

from .cli import display_main

sys.exit(display_main())
