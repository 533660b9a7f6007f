#!/usr/bin/env bash
# The one call on a lent GPU machine for the figures bench/device_figures.py measures (issue 25, item 6).
# Here, once, the wheels the machine lacks (into .whl/, ignored by git): ../shared/tools/gpu-wheels.sh, then
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     -d .whl sdnq==0.2.8
# (58 MB with the tree: the device tool carries 64 MiB at most, so the machine's own transformers,
# 5.17 when last read, is used rather than a 13 MB wheel of 5.23.)
# Then the device call, carrying [".whl"], with the commit it runs (that copy of the tree has no .git):
#   PIPEQUANT_BENCH_COMMIT=<sha> bash bench/device_run.sh [device_figures options]
# The results land in $OUT; here, copy them to bench/results/device/ and run
#   python -m bench.device_figures --write bench/results/device/device_figures.json
set -eu
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# the pack imports itself as `pipequant` (an installed copy's name): point that name at this tree
mkdir -p /tmp/pipequant-pkg && ln -sfn "$PWD" /tmp/pipequant-pkg/pipequant
export PYTHONPATH="/tmp/site:/tmp/pipequant-pkg:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 -m bench.device_figures --out "${OUT:-bench/results/device}" "$@"
