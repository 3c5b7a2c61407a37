"""``fastws serve [module:handler]`` — run a handler from the shell.

Flags are named like uvicorn's where they mean the same (``--host``,
``--port``, ``--uds``, ``--workers``, ``--loop``, ``--log-level``,
``--backlog``, ``--no-access-log``, ``--ws-max-size``, ``--ws-max-queue``,
``--ws-ping-interval``, ``--ws-ping-timeout``, ``--ws-per-message-deflate``,
``--timeout-graceful-shutdown``); every default comes from
:class:`fastws.Config`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import multiprocessing
import os
import signal
import sys
from typing import Any, NoReturn

from . import __version__, _impl
from .config import DEFAULTS, Config
from .server import resolve_handler, serve

logger = logging.getLogger("fastws")

DEMO_TARGET = "fastws.demo:EchoHandler"
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


class TargetError(Exception):
    """The ``module:attribute`` target could not be loaded."""


def load_target(target: str) -> Any:
    """Import ``module:attribute`` (attribute may be dotted)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"target {target!r} must be 'module:attribute', e.g. 'app:handler'")
    # Like uvicorn's --app-dir default: modules in the current directory import.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise TargetError(f"could not import module {module_name!r}: {exc}") from None
        raise TargetError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise TargetError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    try:
        resolve_handler(obj)
    except TypeError as exc:
        raise TargetError(str(exc)) from None
    return obj


def _size(text: str) -> int | None:
    """A byte count: ``1048576``, ``64KiB``, ``16MiB``, or ``none``."""
    value = text.strip().lower()
    if value in ("none", "0", "off", "unlimited"):
        return None
    for suffix, factor in (("kib", 1024), ("mib", 2**20), ("gib", 2**30), ("k", 1024), ("m", 2**20), ("b", 1)):
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


def _seconds(text: str) -> float | None:
    value = text.strip().lower()
    if value in ("none", "off"):
        return None
    return float(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastws", description="A fast WebSocket server for Python.")
    parser.add_argument("--version", action="version", version=f"fastws {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser(
        "serve",
        help="run a WebSocket handler",
        description="Run a handler given as module:attribute (an async function handler(ws), "
        "or a handler class with on_message). Without a target, run the bundled echo demo.",
    )
    s.add_argument("target", nargs="?", default=DEMO_TARGET, help=f"module:attribute (default: {DEMO_TARGET})")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="bind port (default: 8000)")
    s.add_argument("--uds", default=None, help="bind to this Unix domain socket instead")
    s.add_argument("--workers", type=int, default=1, help="worker processes sharing the port with SO_REUSEPORT (default: 1)")
    s.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="event loop (default: auto = uvloop if installed)")
    s.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug", "trace"), default="info")
    s.add_argument("--no-access-log", dest="access_log", action="store_false", help="no log line per connection")
    s.add_argument("--backlog", type=int, default=DEFAULTS.backlog, help=f"listen backlog (default: {DEFAULTS.backlog})")
    s.add_argument(
        "--max-message-size",
        "--ws-max-size",
        dest="max_message_size",
        type=_size,
        default=DEFAULTS.max_message_size,
        help=f"largest message in bytes, e.g. 1MiB; 'none' for no limit (default: {DEFAULTS.max_message_size})",
    )
    s.add_argument("--max-header-size", type=_size, default=DEFAULTS.max_header_size, help=f"largest handshake header block (default: {DEFAULTS.max_header_size})")
    s.add_argument("--write-limit", type=_size, default=DEFAULTS.write_limit, help=f"write buffer high-water mark per connection; above it reading from that peer pauses (default: {DEFAULTS.write_limit})")
    s.add_argument("--max-write-buffer", type=_size, default=DEFAULTS.max_write_buffer, help=f"write buffer cap per connection; a peer that lets more pile up is dropped; 'none' for no cap (default: {DEFAULTS.max_write_buffer})")
    s.add_argument("--ws-max-queue", dest="max_queue", type=lambda t: None if t == "none" else int(t), default=DEFAULTS.max_queue, help=f"coroutine level: queued messages before reading pauses (default: {DEFAULTS.max_queue})")
    s.add_argument("--ws-ping-interval", dest="ping_interval", type=_seconds, default=DEFAULTS.ping_interval, help=f"coroutine level: seconds between keepalive pings (default: {DEFAULTS.ping_interval})")
    s.add_argument("--ws-ping-timeout", dest="ping_timeout", type=_seconds, default=DEFAULTS.ping_timeout, help=f"coroutine level: seconds to wait for a pong (default: {DEFAULTS.ping_timeout})")
    s.add_argument(
        "--ws-per-message-deflate",
        dest="per_message_deflate",
        type=str.lower,
        choices=("true", "false"),
        default="true" if DEFAULTS.compression is not None else "false",
        help="negotiate permessage-deflate compression with clients that offer it "
        f"(default: {'true' if DEFAULTS.compression is not None else 'false'})",
    )
    s.add_argument("--open-timeout", type=_seconds, default=DEFAULTS.open_timeout, help=f"seconds to complete the handshake (default: {DEFAULTS.open_timeout})")
    s.add_argument("--timeout-graceful-shutdown", "--close-timeout", dest="close_timeout", type=_seconds, default=DEFAULTS.close_timeout, help=f"seconds to wait for clients to close on shutdown (default: {DEFAULTS.close_timeout})")
    return parser


def _setup_logging(level: str) -> None:
    numeric = 5 if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(level=numeric, format=LOG_FORMAT, stream=sys.stderr)


def _loop_name(choice: str) -> str:
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise TargetError("--loop uvloop: uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def _run_loop(loop_name: str, coro: Any) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def config_from_args(args: argparse.Namespace) -> Config:
    """The server Config that ``fastws serve`` flags describe."""
    return DEFAULTS.replace(
        max_message_size=args.max_message_size,
        max_header_size=args.max_header_size or DEFAULTS.max_header_size,
        max_queue=args.max_queue,
        write_limit=args.write_limit or DEFAULTS.write_limit,
        max_write_buffer=args.max_write_buffer,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        open_timeout=args.open_timeout,
        close_timeout=args.close_timeout,
        backlog=args.backlog,
        access_log=args.access_log,
        compression=(DEFAULTS.compression or "deflate") if args.per_message_deflate == "true" else None,
    )


async def _serve(args: argparse.Namespace, handler: Any, *, reuse_port: bool, announce: bool) -> None:
    config = config_from_args(args)
    if args.uds:
        server = await serve(handler, path=args.uds, config=config)
        where = f"unix:{args.uds}"
    else:
        server = await serve(handler, args.host, args.port, config=config, reuse_port=reuse_port or None)
        sockname = server.sockets[0].getsockname()
        host = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        where = f"ws://{host}:{sockname[1]}"
    if announce:
        logger.info(
            "fastws %s serving %s on %s (workers %d, loop %s, codec %s)",
            __version__,
            args.target,
            where,
            args.workers,
            _loop_name(args.loop),
            _impl.CODEC_NAME,
        )
    else:
        logger.debug("worker %d serving on %s", os.getpid(), where)
    loop = asyncio.get_running_loop()
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if stopping:
            logger.warning("second %s: exiting now", signame)
            os._exit(1)
        stopping = True
        if announce:
            logger.info("%s received: closing connections with 1001 (waiting up to %ss)", signame, config.close_timeout)
        server.close()

    # Workers stop on the SIGTERM their parent forwards; a terminal's Ctrl-C
    # reaches the whole process group and is the parent's to handle.
    for sig in (signal.SIGINT, signal.SIGTERM) if announce else (signal.SIGTERM,):
        loop.add_signal_handler(sig, stop, sig.name)
    await server.wait_closed()
    if announce:
        logger.info("stopped")


def _worker(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _setup_logging(args.log_level)
    try:
        handler = load_target(args.target)
        _run_loop(_loop_name(args.loop), _serve(args, handler, reuse_port=True, announce=False))
    except KeyboardInterrupt:
        pass


def _serve_workers(args: argparse.Namespace) -> int:
    if args.uds or args.port == 0:
        raise TargetError("--workers > 1 needs a fixed TCP port (SO_REUSEPORT); not --port 0 or --uds")
    if not hasattr(__import__("socket"), "SO_REUSEPORT"):
        raise TargetError("--workers > 1 needs SO_REUSEPORT, which this platform lacks")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(args,), name=f"fastws-worker-{i}") for i in range(args.workers)]
    for p in procs:
        p.start()
    logger.info(
        "fastws %s serving %s on ws://%s:%d (workers %d, loop %s, codec %s)",
        __version__,
        args.target,
        args.host,
        args.port,
        args.workers,
        _loop_name(args.loop),
        _impl.CODEC_NAME,
    )

    def forward(signum: int, frame: Any) -> None:
        logger.info("%s received: stopping workers", signal.Signals(signum).name)
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = 0
    for p in procs:
        p.join()
        if p.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT):
            status = 1
    logger.info("stopped")
    return status


def _fail(message: str) -> NoReturn:
    # One line, no traceback, status 2: argparse's convention for usage errors.
    build_parser().exit(2, f"fastws: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastws`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 2
    _setup_logging(args.log_level)
    try:
        handler = load_target(args.target)
        if args.workers < 1:
            raise TargetError("--workers must be at least 1")
        if args.workers > 1:
            return _serve_workers(args)
        _run_loop(_loop_name(args.loop), _serve(args, handler, reuse_port=False, announce=True))
    except TargetError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen: {exc}")
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
