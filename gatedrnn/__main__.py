"""``python -m gatedrnn``: the command line (see :mod:`gatedrnn.cli`)."""
import sys

from .cli import main

sys.exit(main())
