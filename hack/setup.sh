#!/usr/bin/env bash
# Run the set-up steps of `make test` / `make demo` in concurrent lanes, fail loudly if any fails.
#
#   hack/setup.sh LANE...      LANE = STEP[+STEP...]: the steps of a lane run one after another,
#                              the lanes run at the same time.
#
# The Go builds are CPU-bound and share one module and build cache, so they form one lane
# (control-plane+kubelet+kstatus); the virtualenvs and the Debian packages are mostly download
# and unpack, so each runs beside it. Every step is idempotent and cached by version under
# ~/.cache/amphora-operator (flock-protected), so a warm run takes seconds. Each step's output
# goes to $SETUP_LOG_DIR/<step>.log (default .local/setup-logs); a failed step prints its log's
# tail, the other lanes finish (their caches are still useful), and the script exits 1 naming
# every failed step.
set -uo pipefail
cd "$(dirname "$0")/.."

log_dir=${SETUP_LOG_DIR:-.local/setup-logs}
mkdir -p "$log_dir"
say() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

step_command() {
  case "$1" in
    venv) echo "${MAKE:-make} --no-print-directory venv" ;;
    control-plane) echo "bash hack/control-plane/build.sh" ;;
    kubelet) echo "bash hack/real-node/build-kubelet.sh" ;;
    node-packages) echo "bash hack/real-node/install.sh" ;;
    kstatus) echo "bash hack/kstatus/build.sh" ;;
    nova-venv) echo "bash hack/nova-box/install.sh nova" ;;
    cloud-venv) echo "bash hack/nova-box/install.sh cloud" ;;
    octavia-venv) echo "bash hack/octavia/install.sh" ;;
    *) return 1 ;;
  esac
}

# Run one lane's steps in order; stop the lane at its first failure (later steps depend on it).
run_lane() {
  local step command start rc
  for step in ${1//+/ }; do
    command=$(step_command "$step")
    start=$SECONDS
    say "$step: started ($command)"
    $command >"$log_dir/$step.log" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
      say "$step: FAILED (exit $rc) after $((SECONDS - start)) s; last lines of $log_dir/$step.log:"
      tail -n 40 "$log_dir/$step.log" | sed "s/^/  $step| /" >&2
      return 1
    fi
    say "$step: done in $((SECONDS - start)) s"
  done
}

[ $# -gt 0 ] || { echo "usage: $0 STEP[+STEP...]..." >&2; exit 2; }
for lane in "$@"; do
  for step in ${lane//+/ }; do
    step_command "$step" >/dev/null || { echo "$0: unknown step '$step'" >&2; exit 2; }
  done
done

start=$SECONDS
lanes=("$@")
pids=()
for lane in "${lanes[@]}"; do
  run_lane "$lane" &
  pids+=($!)
done
failed=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed+=("${lanes[$i]}")
done
if [ ${#failed[@]} -gt 0 ]; then
  say "set-up FAILED in lane(s): ${failed[*]} (logs in $log_dir)"
  exit 1
fi
say "set-up complete in $((SECONDS - start)) s"
