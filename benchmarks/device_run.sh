#!/usr/bin/env bash
# The quick protocol on a fresh GPU machine, in one call:
#   run(command="bash benchmarks/device_run.sh", carry=[".device"], timeout_s=600)
# after `python -m benchmarks.device pack --data-dir DIR --get-wheels` here (see benchmarks/RESULTS.md, "quick").
# Installs the carried wheels, then runs `python -m benchmarks.device run` (every stage against a 9-minute deadline
# counted from this script's start) and tees its output to $OUT/log.txt. Extra arguments go to that command, e.g.
# `--device cpu --toy` (what the tests run). Environment: OUT (results; default results/device-out), PART_DEVICE_PACK
# (default .device), PART_DEVICE_SITE (where the wheels go; default /tmp/site).
set -uo pipefail
started=$(date +%s.%N)
cd "$(dirname "$0")/.."
pack=${PART_DEVICE_PACK:-.device}
out=${OUT:-results/device-out}
site=${PART_DEVICE_SITE:-/tmp/site}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
{
  echo "[device_run] $(date -u +%FT%TZ) in $PWD, pack $pack, out $out"
  shopt -s nullglob
  wheels=("$pack"/wheels/*.whl)
  if [ ${#wheels[@]} -gt 0 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "${wheels[@]}" || { echo "[device_run] wheel installation failed"; exit 3; }
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
    echo "[device_run] installed ${#wheels[@]} wheels into $site in $took s"
  else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "[device_run] no wheels in $pack/wheels: using the installed packages"
  fi
  python3 -m benchmarks.device run --pack "$pack" --out "$out" --started-at "$started" "$@"
} 2>&1 | tee "$out/log.txt"
