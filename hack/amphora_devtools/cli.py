"""``amphora-dev``: one entry point for the developer tools (``amphora-dev cluster up``, ...)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from amphora_devtools import control_plane, operator_process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amphora-dev", description=__doc__)
    groups = parser.add_subparsers(dest="group", required=True)
    control_plane.configure_parser(
        groups.add_parser("cluster", help="local Go-built control plane: up, down, status")
    )
    operator_process.configure_parser(
        groups.add_parser("operator", help="a detached operator for the demo: start, stop")
    )
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
