"""``amphora-operator``: run the operator, print the CRD, list installed drivers."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amphora-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="reconcile Amphorae until stopped")
    run.add_argument("--config", help="operator configuration YAML (profiles, defaults, timing)")
    run.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, then ~/.kube)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="Prometheus /metrics port, 0 to disable (default 9090)",
    )
    run.add_argument(
        "--health-port",
        type=int,
        default=8080,
        help="liveness/readiness /healthz port, 0 to disable (default 8080)",
    )
    run.add_argument(
        "--leader-election",
        action="store_true",
        help="hold a Lease so that only one replica acts (use with replicas > 1)",
    )
    run.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    run.add_argument("--identity", default=os.environ.get("POD_NAME", socket.gethostname()))
    run.add_argument(
        "--concurrency", type=int, help="driver and API calls at once (overrides the config file)"
    )
    run.add_argument("--log-format", choices=["plain", "json"], default="json")
    run.add_argument("--verbose", action="store_true")
    sub.add_parser("crd", help="print the CustomResourceDefinition YAML")
    sub.add_parser("drivers", help="list installed compute drivers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "crd":
        from amphora_operator.crd import crd_yaml

        sys.stdout.write(crd_yaml())
        return 0
    if args.command == "drivers":
        from amphora_drivers import available_drivers

        print("\n".join(available_drivers()))
        return 0
    return _run(args)


def _drop_tracking_successes(record: logging.LogRecord) -> bool:
    """kopf logs every watch event's handler at INFO; for thousands of Amphorae that is noise."""
    return not str(record.msg).startswith("Handler 'track' succeeded")


#: Loggers of HTTP clients that write whole response bodies at DEBUG (kubernetes releases up
#: to 33 log ``response body: ...`` in ``kubernetes.client.rest``, Secrets included).
_BODY_LOGGERS = ("kubernetes.client.rest",)


def _above_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


def _never_log_bodies() -> None:
    """Drop the DEBUG records of client loggers that carry response bodies: a filter on the
    logger itself, so it holds at any level anyone sets (``--verbose`` sets the root to
    DEBUG; a user may set every logger to DEBUG)."""
    for name in _BODY_LOGGERS:
        logger = logging.getLogger(name)
        if _above_debug not in logger.filters:
            logger.addFilter(_above_debug)


def _run(args: argparse.Namespace) -> int:
    import kopf

    from amphora_operator.config import load_config
    from amphora_operator.handlers import RunOptions, make_registry

    config = load_config(args.config)
    if args.concurrency:
        config.reconcile.concurrency = args.concurrency
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("amphora_operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    objects = logging.getLogger("kopf.objects")
    objects.addFilter(_drop_tracking_successes)
    if not args.verbose:  # its INFO lines are handler successes: not even built (CPU per event)
        objects.setLevel(logging.WARNING)
    _never_log_bodies()
    options = RunOptions(
        config=config,
        kubeconfig=args.kubeconfig,
        metrics_port=args.metrics_port,
        leader_election=args.leader_election,
        namespaces_exact=bool(args.namespace)
        and not any(c in n for n in args.namespace for c in "*?[!"),
        lease_namespace=args.lease_namespace,
        identity=args.identity,
    )
    kopf.run(
        registry=make_registry(options),
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        standalone=True,
        liveness_endpoint=(
            f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
