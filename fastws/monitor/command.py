"""``fastws monitor URL...``: the command line of the monitor.

Exit status: with ``--once``, 0 when every endpoint is up, 1 when one is
down; 2 for a usage error (as argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from .schedule import Endpoint, LiveTable, Monitor, PrometheusExport, json_line

__all__ = ["add_parser", "run"]

_CHECK_OPTIONS = ("timeout", "headers", "subprotocol", "origin", "insecure", "cafile", "send", "expect", "expect_close")


def add_parser(sub: Any) -> None:
    m = sub.add_parser(
        "monitor",
        help="check WebSocket endpoints on a schedule",
        description="Check WebSocket endpoints (yours or anyone's): DNS, TCP, TLS, upgrade and ping times, "
        "uptime, certificate expiry, and each failure by name. See docs/monitor.md.",
    )
    m.add_argument("urls", nargs="*", metavar="URL", help="ws:// or wss:// endpoints")
    m.add_argument("--interval", type=float, default=30.0, help="seconds between checks of an endpoint (default: 30)")
    m.add_argument("--timeout", type=float, default=10.0, help="seconds one check may take (default: 10)")
    m.add_argument("--header", action="append", default=[], metavar="K:V", help="extra request header (repeatable), e.g. auth")
    m.add_argument("--subprotocol", help="Sec-WebSocket-Protocol to ask for")
    m.add_argument("--origin", help="Origin header to send")
    m.add_argument("--insecure", action="store_true", help="accept any TLS certificate (test certificates)")
    m.add_argument("--cafile", help="CA certificates (PEM) to trust for wss://")
    m.add_argument("--send", metavar="TEXT", help="after the ping, send this text message ...")
    m.add_argument("--expect", metavar="REGEX", help="... and require the answer to match this regular expression")
    m.add_argument("--expect-close", type=int, metavar="CODE", help="require the server to close with this code")
    m.add_argument("--cert-warn-days", type=float, default=14.0, help="warn when a certificate expires sooner (default: 14)")
    m.add_argument("--config", metavar="FILE", help="JSON or YAML file: {interval, endpoints: [{url, send, expect, headers, ...}]}")
    m.add_argument("--json", action="store_true", help="one JSON line per check instead of the table")
    m.add_argument("--once", action="store_true", help="check each endpoint once; exit 0 if all are up, 1 if not")
    m.add_argument("--prometheus-port", type=int, metavar="PORT", help="serve the figures as Prometheus metrics on this port")


class UsageError(Exception):
    """A bad argument or config file: exit status 2."""


def _headers(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {item!r}: use NAME:VALUE")
        out.append((name.strip(), value.strip()))
    return out


def endpoints_from(args: argparse.Namespace) -> tuple[list[Endpoint], float]:
    """The endpoints of the command line and of ``--config``, and the interval."""
    defaults: dict[str, Any] = {
        "timeout": args.timeout, "headers": _headers(args.header), "subprotocol": args.subprotocol, "origin": args.origin,
        "insecure": args.insecure, "cafile": args.cafile, "send": args.send, "expect": args.expect,
        "expect_close": args.expect_close,
    }  # fmt: skip
    if args.expect is not None and args.send is None:
        raise UsageError("--expect needs --send (the message whose answer it checks)")
    endpoints = [Endpoint(url, dict(defaults)) for url in args.urls]
    interval = args.interval
    if args.config:
        path = Path(args.config)
        try:
            text = path.read_text()
            doc = json.loads(text) if path.suffix == ".json" else _yaml(text)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--config {path}: {exc}") from None
        interval = float(doc.get("interval", interval))
        for item in doc.get("endpoints", []):
            if not isinstance(item, dict) or "url" not in item:
                raise UsageError(f"--config {path}: each endpoint needs a url: {item!r}")
            options = dict(defaults)
            for key, value in item.items():
                key = key.replace("-", "_")
                if key == "url":
                    continue
                if key not in _CHECK_OPTIONS:
                    raise UsageError(f"--config {path}: unknown option {key!r} (known: {', '.join(_CHECK_OPTIONS)})")
                options[key] = list(value.items()) if key == "headers" and isinstance(value, dict) else value
            endpoints.append(Endpoint(item["url"], options))
    if not endpoints:
        raise UsageError("give at least one ws:// or wss:// URL (or --config)")
    for e in endpoints:
        if not e.url.startswith(("ws://", "wss://")):
            raise UsageError(f"{e.url!r} is not a ws:// or wss:// URL")
    if interval <= 0:
        raise UsageError("--interval must be positive")
    return endpoints, interval


def _yaml(text: str) -> Any:
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError:
        raise ValueError("YAML needs PyYAML (pip install pyyaml); or use a .json file") from None
    return yaml.safe_load(text)


def run(args: argparse.Namespace) -> int:
    """Run the monitor as the arguments say; the exit status."""
    try:
        endpoints, interval = endpoints_from(args)
    except UsageError as exc:
        sys.stderr.write(f"fastws: error: {exc}\n")
        return 2
    report = json_line() if args.json else LiveTable(endpoints)
    monitor = Monitor(endpoints, interval, report, cert_warn_days=args.cert_warn_days)
    export = None
    if args.prometheus_port is not None:
        try:
            export = PrometheusExport(endpoints, args.prometheus_port)
        except OSError as exc:
            sys.stderr.write(f"fastws: error: --prometheus-port {args.prometheus_port}: {exc.strerror or exc}\n")
            return 2
    try:
        if args.once:
            results = asyncio.run(monitor.check_once())
            return 0 if all(r.up for r in results) else 1
        asyncio.run(monitor.run())
    except KeyboardInterrupt:
        pass
    finally:
        if export is not None:
            export.close()
    return 0
