"""`python -m pipequant run|validate|demo` — see runner/cli.py."""

import sys

from .runner.cli import main

sys.exit(main())
