"""``python -m tardis_netadapter_lab lab up|down|status|exec|fault`` and ``... demo``."""

import sys

from .cli import main

sys.exit(main())
