"""`python -m pipequant run|validate|demo` — see runner/cli.py."""

import os
import sys

if sys.argv[1:2] == ["plan"]:
    # Importing sdnq (the planner asks its quantizer which layers it takes) test-compiles a function
    # with torch.compile unless told not to: 3.5 s of a cold plan's 13-16 s CPU here. A `plan` process
    # never runs an sdnq layer, so the test buys it nothing; a value the user set is kept. Only here,
    # in the CLI's own process: main() called in a longer-lived process leaves sdnq as it is.
    os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")

from .runner.cli import main  # noqa: E402

sys.exit(main())
