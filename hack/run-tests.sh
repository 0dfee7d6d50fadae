#!/usr/bin/env bash
# Run the suite in this process, or on AMPHORA_TEST_WORKERS pytest-xdist workers (opt-in;
# tests/conftest.py keeps tests/container, the real Node's users, on one worker and each other
# module on one worker, slow ones first). Two workers took 24.6 min instead of 37-42 min, but
# a few timing-bound tests still fail under that load, so the default stays 0 (one process).
# pytest's exit 5 ("no tests collected") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
workers="${AMPHORA_TEST_WORKERS:-0}"
parallel=()
if [ "$workers" != "0" ]; then
  parallel=(-n "$workers" --dist loadscope --no-loadscope-reorder)
fi
python -m pytest "${parallel[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
