#!/usr/bin/env bash
# The one family test the suite cannot run in its own environment: FLUX.2 [dev]'s processor
# (transformers' PixtralProcessor) needs torchvision, and the local package source holds no CPU
# torchvision for the suite's torch 2.13.0 (its torchvision 0.28.0 is a CUDA build that does not
# import against CPU torch). ComfyUI installs have torch + torchvision, so this runs that test in a
# side venv with the pair ComfyUI 0.3.64's own venv has (torch 2.14.1 + torchvision 0.29.1: CUDA
# builds, which run on the CPU), sharing every other package with the test environment. The venv is
# made once (about 1 minute, 5 GB under $TMPDIR) and reused. A skip there is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TMPDIR:-/tmp}/pipequant-torchvision"
if ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
  rm -rf "$venv"
  python -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
fi
PIPEQUANT_NEEDS_TORCHVISION=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_families.py -k "FLUX.2 and dev"
