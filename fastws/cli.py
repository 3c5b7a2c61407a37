"""``fastws serve [module:handler]`` — run a handler from the shell.

Flags are named like uvicorn's where they mean the same (``--host``,
``--port``, ``--uds``, ``--workers``, ``--loop``, ``--log-level``,
``--backlog``, ``--no-access-log``, ``--ws-max-size``, ``--ws-max-queue``,
``--ws-ping-interval``, ``--ws-ping-timeout``, ``--ws-per-message-deflate``,
``--timeout-graceful-shutdown``). Every flag is generated from a field of
:class:`fastws.Config` (its metadata names the flag and the help text), so
defaults and flags live in one place.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import functools
import json
import logging
import logging.config
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from . import _select
from ._version import __version__
from .config import Config, Option, options
from .server import resolve_handler, serve, tls_context
from .bench import command as bench_command
from .monitor import command as monitor_command
from .rooms.workers import Relay, relay_path
from .supervisor import Supervisor

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


_NONE_WORDS = ("none", "off", "unlimited")
_SIZE_SUFFIXES = (("kib", 1024), ("mib", 2**20), ("gib", 2**30), ("k", 1024), ("m", 2**20), ("b", 1))


def _size(text: str) -> int:
    """A byte count: ``1048576``, ``64KiB``, ``16MiB``."""
    value = text.strip().lower()
    for suffix, factor in _SIZE_SUFFIXES:
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


def _list(text: str) -> tuple[str | None, ...]:
    """``a,b,none``: the items, ``none`` standing for None (e.g. "no Origin")."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(text)
    return tuple(None if item.lower() == "none" else item for item in items)


def _reader(field: dataclasses.Field[Any], opt: Option) -> Callable[[str], Any]:
    """The argparse ``type`` of a flag: parse one value, 'none' only where
    the field allows None (elsewhere it is a usage error, never the default)."""
    readers: dict[str, Callable[[str], Any]] = {"size": _size, "seconds": float, "int": int, "str": str, "list": _list}
    base = readers[opt.kind]
    optional = "None" in str(field.type)

    def read(text: str) -> Any:
        if text.strip().lower() in _NONE_WORDS:
            if optional:
                return None
            raise argparse.ArgumentTypeError(f"{text!r}: this option needs a value; it cannot be turned off")
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None

    read.__name__ = opt.kind  # argparse names the type in its error message
    return read


_METAVARS = {"size": "BYTES", "seconds": "SECONDS", "int": "N", "str": "TEXT", "list": "A,B,..."}


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join("none" if item is None else str(item) for item in value)
    return "none" if value is None else str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`Config` field, from the field's metadata."""
    for f, opt in options():
        default = f.default
        if opt.env is not None and os.environ.get(opt.env):
            default = _reader(f, opt)(os.environ[opt.env])
        if opt.kind == "no":
            parser.add_argument(*opt.flags, dest=f.name, action="store_false", help=opt.help)
        elif opt.kind == "flag":
            parser.add_argument(
                *opt.flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                help=f"{opt.help} (default: {'on' if default else 'off'})",
            )
        elif opt.kind == "switch":
            # argparse runs `type` over a str default: give it the word.
            word = "true" if default == opt.on else "false"
            parser.add_argument(
                *opt.flags,
                dest=f.name,
                type=_switch(opt),
                default=word,
                metavar="{true,false}",
                help=f"{opt.help} (default: {word})",
            )
        elif opt.kind == "choice":
            parser.add_argument(*opt.flags, dest=f.name, choices=opt.choices, default=default, help=f"{opt.help} (default: {default})")
        else:
            parser.add_argument(
                *opt.flags,
                dest=f.name,
                type=_reader(f, opt),
                default=default,
                metavar=opt.metavar or _METAVARS[opt.kind],
                help=f"{opt.help} (default: {_describe(default)})",
            )


def _switch(opt: Option) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        value = text.strip().lower()
        if value in ("true", "yes", "on", "1"):
            return opt.on
        if value in ("false", "no", "off", "0"):
            return opt.off
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use true or false")

    read.__name__ = "switch"
    return read


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastws", description="A fast WebSocket server for Python.")
    parser.add_argument("--version", action="version", version=f"fastws {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser(
        "serve",
        help="run a WebSocket handler",
        description="Run a handler given as module:attribute (an async function handler(ws), "
        "or a handler class with on_message). Without a target, run the bundled demo (echo, a chat room, "
        "and the HTTP fallback on, so its page can try every transport).",
    )
    s.add_argument("target", nargs="?", default=DEMO_TARGET, help=f"module:attribute (default: {DEMO_TARGET})")
    add_config_flags(s)
    monitor_command.add_parser(sub)
    bench_command.add_parser(sub)
    return parser


TRACE = 5
logging.addLevelName(TRACE, "TRACE")


def _setup_logging(level: str, log_config: str | None = None) -> None:
    """``--log-level`` on stderr, or the user's ``--log-config`` file."""
    if log_config is None:
        logging.basicConfig(level=TRACE if level == "trace" else getattr(logging, level.upper()), format=LOG_FORMAT, stream=sys.stderr)
        return
    try:
        if log_config.endswith(".json"):
            with open(log_config, encoding="utf-8") as f:
                logging.config.dictConfig(json.load(f))
        elif log_config.endswith((".yaml", ".yml")):
            try:
                yaml: Any = importlib.import_module("yaml")
            except ImportError:
                raise TargetError(f"--log-config {log_config}: YAML needs PyYAML (pip install pyyaml)") from None
            with open(log_config, encoding="utf-8") as f:
                logging.config.dictConfig(yaml.safe_load(f))
        else:
            logging.config.fileConfig(log_config, disable_existing_loggers=False)
    except TargetError:
        raise
    except Exception as exc:
        raise TargetError(f"--log-config {log_config}: {type(exc).__name__}: {exc}") from None


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
    """The Config that ``fastws serve`` flags describe (every field has one)."""
    try:
        return Config(**{f.name: getattr(args, f.name) for f, _ in options()})
    except ValueError as exc:
        raise TargetError(_flag_message(str(exc))) from None


def _flag_message(message: str) -> str:
    """Config names the field; the user typed the flag."""
    for f, opt in options():
        message = re.sub(rf"\b(?<!-){f.name}\b", opt.flags[0], message)
    return message.replace("or None for", "or 'none' for")


def _scheme(config: Config) -> str:
    return "ws" if config.ssl_certfile is None else "wss"


def _codec_name() -> str:
    return "compiled" if _select.compiled() else "pure-python"


def _inherited_socket(fd: int) -> socket.socket:
    """The listening socket a process manager passed as ``--fd``."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise TargetError(f"--fd {fd}: not an open socket: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM:
        raise TargetError(f"--fd {fd}: not a stream socket")
    return sock


def _where(config: Config, sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname() or config.uds}"
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{_scheme(config)}://{host}:{port}"


async def _serve(
    config: Config,
    target: str,
    handler: Any,
    *,
    announce: bool,
    sock: socket.socket | None = None,
    ready: Connection | None = None,
    worker_share: tuple[str, int] | None = None,
    rooms_relay: str | None = None,
) -> None:
    """Serve until SIGTERM (or SIGINT when ``announce``: the one process a
    terminal's Ctrl-C is for), then drain."""
    share: dict[str, Any] = {} if worker_share is None else {"worker_share": worker_share}
    if rooms_relay is not None:
        share["rooms_relay"] = rooms_relay
    if sock is not None:
        server = await serve(handler, config=config, sock=sock, **share)
    elif config.uds:
        server = await serve(handler, config=config, **share)
    else:
        # Workers share the port with SO_REUSEPORT.
        server = await serve(handler, config=config, reuse_port=config.workers > 1 or None, **share)
    where = _where(config, server.sockets[0])
    if announce:
        logger.info(
            "fastws %s serving %s on %s (workers %d, loop %s, codec %s)",
            __version__, target, where, config.workers, _loop_name(config.loop), _codec_name(),
        )  # fmt: skip
    else:
        logger.debug("worker %d serving on %s", os.getpid(), where)
    if ready is not None:
        ready.send(os.getpid())
        ready.close()
    loop = asyncio.get_running_loop()
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if stopping:
            if not announce:
                # A worker gets SIGTERM from its supervisor and, when the
                # whole group is signalled (systemd's KillMode=control-group),
                # directly too: one stop. The supervisor decides "at once".
                logger.debug("%s again: already draining", signame)
                return
            logger.warning("second %s: exiting now", signame)
            os._exit(1)
        stopping = True
        logger.log(
            logging.INFO if announce else logging.DEBUG,
            "%s received: closing connections with %d (%d open; waiting up to %ss)",
            signame, config.shutdown_close_code, len(server.connections), config.close_timeout,
        )  # fmt: skip
        server.close(code=config.shutdown_close_code)

    # Workers stop on the SIGTERM their supervisor forwards; a terminal's
    # Ctrl-C reaches the whole process group and is the supervisor's.
    for sig in (signal.SIGINT, signal.SIGTERM) if announce else (signal.SIGTERM,):
        loop.add_signal_handler(sig, stop, sig.name)
    await server.wait_closed()
    if announce:
        logger.info("stopped")


def _worker(
    config: Config,
    target: str,
    sock: socket.socket | None,
    share_dir: str | None,
    rooms_relay: str | None,
    ready: Connection,
    index: int,
) -> None:
    """The body of one worker process (spawned: it imports the target itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _setup_logging(config.log_level, config.log_config)
        handler = load_target(target)
        share = None if share_dir is None else (share_dir, index)
        serving = _serve(
            config, target, handler, announce=False, sock=sock, ready=ready, worker_share=share, rooms_relay=rooms_relay
        )
        _run_loop(_loop_name(config.loop), serving)
    except TargetError as exc:
        logger.critical("worker %d: %s", index, exc)
        sys.exit(3)
    except OSError as exc:
        logger.critical("worker %d: cannot listen: %s", index, exc)
        sys.exit(3)
    except KeyboardInterrupt:
        pass


def _check_port(config: Config) -> None:
    """Fail in one line, before any worker starts, if the port is taken
    (by a process that does not share it with SO_REUSEPORT)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise TargetError("--workers > 1 needs SO_REUSEPORT, which this platform lacks")
    infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(address)


def _serve_workers(config: Config, target: str) -> int:
    sock = None
    if config.fd is not None:
        sock = _inherited_socket(config.fd)
        where = _where(config, sock)
    elif config.uds or config.port == 0:
        raise TargetError("--workers > 1 needs a fixed TCP port (SO_REUSEPORT) or --fd; not --port 0 or --uds")
    else:
        _check_port(config)
        host = f"[{config.host}]" if config.host and ":" in config.host else config.host
        where = f"{_scheme(config)}://{host}:{config.port}"

    def announce() -> None:
        # Once every worker listens: whoever waits for this line can connect.
        logger.info(
            "fastws %s serving %s on %s (workers %d, loop %s, codec %s)",
            __version__, target, where, config.workers, _loop_name(config.loop), _codec_name(),
        )  # fmt: skip

    # Workers publish their figures here, so one scrape sees them all.
    share_dir = tempfile.mkdtemp(prefix="fastws-workers-") if config.counting else None
    # --broker workers: the workers' rooms meet in a relay run here.
    relay = None
    if config.broker == "workers":
        relay_dir = tempfile.mkdtemp(prefix="fastws-rooms-")
        relay = Relay(relay_path(relay_dir))
        relay.start()
    try:
        worker = functools.partial(_worker, config, target, sock, share_dir, None if relay is None else relay.path)
        status = Supervisor(worker, config.workers, on_listening=announce).run()
    finally:
        if share_dir is not None:
            shutil.rmtree(share_dir, ignore_errors=True)
        if relay is not None:
            relay.stop()
            shutil.rmtree(os.path.dirname(relay.path), ignore_errors=True)
    logger.info("stopped")
    return status


def _fail(message: str) -> NoReturn:
    # One line, no traceback, status 2: argparse's convention for usage errors.
    build_parser().exit(2, f"fastws: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastws`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "monitor":
        return monitor_command.run(args)
    if args.command == "bench":
        return bench_command.run(args)
    if args.command != "serve":
        parser.print_help()
        return 2
    try:
        _setup_logging(args.log_level, args.log_config)
        config = config_from_args(args)
        if args.target == DEMO_TARGET and not config.fallback and "--no-fallback" not in (sys.argv[1:] if argv is None else argv):
            # The demo page shows every transport (?transport=sse, polling).
            config = config.replace(fallback=True)
        handler = load_target(args.target)
        try:
            tls_context(config)  # fail now, in one line, not in a worker
        except (OSError, ValueError) as exc:
            what = _flag_message(str(exc)) if isinstance(exc, FileNotFoundError) else f"cannot use --ssl-certfile/--ssl-keyfile: {exc}"
            raise TargetError(f"TLS: {what}") from None
        if config.workers > 1:
            return _serve_workers(config, args.target)
        sock = None if config.fd is None else _inherited_socket(config.fd)
        _run_loop(_loop_name(config.loop), _serve(config, args.target, handler, announce=True, sock=sock))
    except TargetError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen: {exc}")
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
