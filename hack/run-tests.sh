#!/usr/bin/env bash
# Run the suite on AMPHORA_TEST_WORKERS pytest-xdist workers (default 2, one per core of the
# project's 2-core machines; 0 = in this process). Each worker starts its own control plane and
# Nova box; tests/conftest.py keeps tests/container, the real Node's users, on one worker and
# each other module on one worker, slow ones first.
# pytest's exit 5 ("no tests collected") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
workers="${AMPHORA_TEST_WORKERS:-2}"
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
