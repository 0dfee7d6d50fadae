#!/usr/bin/env bash
# The one-command demo (`make demo` / `make demo-down`).
#
#   up    build or reuse the local control plane (state in .local/demo/), install the CRD,
#         start the operator in the background with hack/demo-config.yaml, apply examples/
#         and show the Amphorae reaching Ready.
#   down  stop the operator and the control plane and remove .local/demo/.
#
# Running `up` again reuses the control plane and restarts the operator (so it runs the current
# code); examples/ is re-applied unchanged.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
state="$repo/.local/demo"
config="$repo/hack/demo-config.yaml"
crd="$repo/crds/amphorae.amphora-operator.dev.yaml"
log_file="$state/operator-1.log"
ready_timeout=${DEMO_READY_TIMEOUT:-120}
# `make demo` puts the venv first on PATH; do the same when the script is run directly.
[ -x "$repo/.venv/bin/python" ] && PATH="$repo/.venv/bin:$PATH"
export KUBECONFIG="$state/kubeconfig"

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '%s==> %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# The operator and the control plane are started and stopped by the harness package
# (amphora_devtools, `amphora-dev`), the same code the tests and benchmarks use.
stop_operator() { amphora-dev operator stop --workdir "$state" | sed 's/^/    /'; }

up() {
  local started=$SECONDS
  mkdir -p "$state"

  step "control plane (first run builds it from Go sources: minutes; cached afterwards)"
  # up() itself retries a failed start on fresh state and ports (see hack/README.md).
  amphora-dev cluster up --state-dir "$state" | sed 's/^/    /' \
    || die "the control plane did not start; logs in $state/logs"

  real_node=no
  step "real kubelet Node (root and hack/real-node/install.sh's Debian packages)"
  if [ "$(id -u)" -eq 0 ] && python -m amphora_devtools.real_node up --kubeconfig "$KUBECONFIG" \
    --state-dir "$state/real-node" 2>&1 | sed 's/^/    /'; then
    real_node=yes
    # The demo's config plus a profile that puts Container Amphorae on the real Node.
    python -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); c["profiles"]["container-real"] = {"driver": "container", "options": {"node_selector": {"amphora-operator.dev/real-node": "true"}, "tolerations": [{"key": "amphora-operator.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}], "image_pull_policy": "Never"}}; yaml.safe_dump(c, open(sys.argv[2], "w"))' \
      "$config" "$state/config.yaml"
    config="$state/config.yaml"
  else
    step "NO real Node (needs root and the Debian packages): Container Amphorae run on kwok Nodes only, whose Pods only pretend to run"
  fi

  step "installing the Amphora CRD"
  kubectl apply -f "$crd" | sed 's/^/    /'
  kubectl wait --for=condition=Established --timeout=60s crd/amphorae.amphora-operator.dev >/dev/null

  step "starting the operator (noop driver for VM/BareMetal, container driver for Container)"
  # In $state, where the config's relative noop state file lives; in a session of its own,
  # so `down` stops it whole. A running one is stopped first, so it runs the current code.
  amphora-dev operator start --workdir "$state" --config "$config" --kubeconfig "$KUBECONFIG" \
    | sed 's/^/    /' || die "the operator did not start; log: $state/operator-1.log"

  step "applying examples/ (VM, BareMetal, Container and Secret-based Amphorae)"
  kubectl apply -f "$repo/examples" | sed 's/^/    /'
  if [ "$real_node" = yes ]; then
    kubectl apply -f "$repo/hack/real-node/demo-amphora.yaml" | sed 's/^/    /'
  fi

  step "waiting for every Amphora to be Ready (at most ${ready_timeout} s)"
  local deadline=$((SECONDS + ready_timeout)) phases previous='' total pending
  while :; do
    phases=$(kubectl get amphorae -A -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}')
    total=$(grep -c . <<<"$phases" || true)
    pending=$(grep -cvx 'Ready' <<<"$phases" || true)
    if [ "$phases" != "$previous" ]; then
      printf '    [%3ds] %s\n' "$((SECONDS - started))" \
        "$(sort <<<"$phases" | uniq -c | awk '{printf "%s%s=%s", sep, ($2 == "" ? "Pending" : $2), $1; sep=", "}')"
      previous=$phases
    fi
    [ "$total" -gt 0 ] && [ "$pending" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      kubectl get amphorae -A -o wide
      tail -n 30 "$log_file" >&2
      die "not all Amphorae were Ready after ${ready_timeout} s; see kubectl describe amphorae and $log_file"
    fi
    sleep 1
  done
  echo
  kubectl get amphorae -A -o wide
  echo
  step "demo ready in $((SECONDS - started)) s"
  cat <<EOF
    export KUBECONFIG=$KUBECONFIG
    kubectl get amphorae -o wide        # the table above
    kubectl describe amphora <name>     # conditions and events
    tail -f $log_file
    make demo-down                      # stop everything and remove ${state#"$repo"/}/
EOF
}

down() {
  stop_operator
  if [ -f "$state/real-node/pids.json" ]; then
    step "stopping the real Node"
    python -m amphora_devtools.real_node down --state-dir "$state/real-node" | sed 's/^/    /'
  fi
  if [ -f "$state/state.json" ]; then
    step "stopping the control plane"
    amphora-dev cluster down --state-dir "$state" | sed 's/^/    /'
  fi
  step "removing ${state#"$repo"/}/"
  rm -rf "$state"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
