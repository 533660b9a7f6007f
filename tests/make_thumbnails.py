"""Make the template browser's thumbnails, example_workflows/<name>.jpg, from the templates as they
open in a real ComfyUI (pinned frontend, CPU server: a Backend that needs a GPU is shown as the CPU
variant, not as the red error), and docs/editor.png for the README.

    COMFYUI_DIR=/path/to/ComfyUI python tests/make_thumbnails.py             # every template
    COMFYUI_DIR=/path/to/ComfyUI python tests/make_thumbnails.py "KSampler or Wan"

The optional argument is a pytest -k expression over the template names (words of them: "Wan",
"KSampler", "LoRA"). It runs the browser test that loads each template
(test_example_loads_with_its_saved_state_and_round_trips) with PIPEQUANT_WRITE_THUMBNAILS=1, so a
thumbnail is only written for a template that passes it. Needs what tests/test_browser.py needs
(Chromium, playwright); look at the pictures before committing them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
TEST = "test_example_loads_with_its_saved_state_and_round_trips"


def main(argv: list[str]) -> int:
    if not os.environ.get("COMFYUI_DIR"):
        print("set COMFYUI_DIR to a ComfyUI checkout (see tests/comfy_server.py)", file=sys.stderr)
        return 2
    select = f"pinned and ({TEST} or test_readme_screenshot)"
    if argv:
        select = f"pinned and {TEST} and ({argv[0]})"
    env = {**os.environ, "PIPEQUANT_WRITE_THUMBNAILS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_browser.py", "-k", select]
    return subprocess.call(command, cwd=PACK_DIR, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
