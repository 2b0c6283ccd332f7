#!/usr/bin/env bash
# The GPU check as one command (see gpu_check.py for what it measures):
#   benchmarks/gpu_check.sh OUT_DIR [--tiny]   install the wheels carried in .whl/ (if any), then check
#   benchmarks/gpu_check.sh --download         fetch benchmarks/gpu_wheels.txt into .whl/ (needs PyPI)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

if [[ "${1:-}" == "--download" ]]; then
  # The device machine runs Python 3.12 on x86-64; no dependencies are resolved: the list is complete.
  grep -v '^#' "$repo/benchmarks/gpu_wheels.txt" | awk 'NF {print $1}' | xargs "$python" -m pip download -q --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$repo/.whl"
  total=$(du -cb "$repo"/.whl/*.whl | tail -1 | cut -f1)
  echo "$(ls "$repo"/.whl/*.whl | wc -l) wheels, $((total / 1048576)) MiB in .whl/"
  if (( total >= 60 * 1048576 )); then echo "over the 60 MiB a device call may carry" >&2; exit 1; fi
  exit 0
fi

if compgen -G "$repo/.whl/*.whl" >/dev/null && [[ " $* " != *" --tiny "* ]]; then
  site="${TMPDIR:-/tmp}/portraitkit-gpu-check-site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$repo"/.whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
