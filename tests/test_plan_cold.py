"""The cold `python -m pipequant plan` (issue 25 item 2): what its own process sets up."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = r"""
import os, runpy, sys
sys.argv = ["pipequant", *sys.argv[1:]]
try:
    runpy.run_module("pipequant", run_name="__main__")
except SystemExit:
    pass
print("SDNQ_USE_TORCH_COMPILE=" + os.environ.get("SDNQ_USE_TORCH_COMPILE", "unset"))
"""


def _probe(*args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "SDNQ_USE_TORCH_COMPILE"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env={**clean, **env}, timeout=300
    )
    return out.stdout.strip().splitlines()[-1]


def test_the_plan_cli_skips_sdnqs_import_time_compile_test_unless_the_user_chose():
    """sdnq test-compiles a function when imported (3.5 s of a 13-16 s cold plan); `plan` never runs
    an sdnq layer. Other commands, and a value the user set, are left alone."""
    assert _probe("plan", "--help") == "SDNQ_USE_TORCH_COMPILE=0"
    assert _probe("plan", "--help", SDNQ_USE_TORCH_COMPILE="1") == "SDNQ_USE_TORCH_COMPILE=1"
    assert _probe("validate", "--help") == "SDNQ_USE_TORCH_COMPILE=unset"
