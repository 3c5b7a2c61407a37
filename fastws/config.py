"""Every option of the server, with its unit, default and CLI flag, in one place.

The API (:func:`fastws.serve`) and the CLI (``fastws serve``) both build a
:class:`Config`, and the CLI's flags are generated from the metadata of its
fields (:func:`option`), so a new option is added here and nowhere else.
``None`` means "off" / "no limit" wherever a limit allows it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .types import CloseCode

__all__ = ["Config", "DEFAULTS", "Option", "options", "proxy_entry"]


@dataclass(frozen=True, slots=True)
class Option:
    """How a Config field appears on the command line."""

    #: Flag names, the first is the main one (uvicorn's where it has one).
    flags: tuple[str, ...]
    #: One line for ``--help``; the default is appended.
    help: str
    #: How a value is read: "size" (``64KiB``), "seconds", "int", "str",
    #: "list" (comma-separated; the word ``none`` stands for None),
    #: "choice", "switch" (``true``/``false`` to the field's on/off values),
    #: "no" (a ``--no-x`` flag that sets False), or "flag" (``--x`` and
    #: ``--no-x``).
    kind: str
    #: For "choice": the accepted values.
    choices: tuple[str, ...] = ()
    #: For "switch": the field's values for ``true`` and ``false``.
    on: Any = True
    off: Any = False
    #: Read by the process (CLI), not by a server: ``serve()`` refuses it.
    process: bool = False
    metavar: str | None = None
    #: Environment variable that gives the CLI default (uvicorn reads
    #: ``FORWARDED_ALLOW_IPS`` so).
    env: str | None = None


def option(default: Any, *flags: str, help: str, kind: str, **extra: Any) -> Any:
    """A Config field with its CLI description (``Option``) as metadata."""
    return field(default=default, metadata={"cli": Option(tuple(flags), help, kind, **extra)})


@dataclass(frozen=True, slots=True)
class Config:
    """Every option of a server; see ``docs/limits.md`` for the limits."""

    # -- where and how to run (the CLI; serve() takes host/port as arguments)
    #: Address to bind (``None``: every interface).
    host: str | None = option("127.0.0.1", "--host", help="bind address", kind="str")
    #: TCP port to bind (0: any free port).
    port: int = option(8000, "--port", help="bind port", kind="int")
    #: Bind to this Unix domain socket instead of host/port.
    uds: str | None = option(None, "--uds", help="bind to this Unix domain socket instead", kind="str", metavar="PATH")
    #: Worker processes sharing the port with SO_REUSEPORT (CLI only).
    workers: int = option(1, "--workers", help="worker processes sharing the port with SO_REUSEPORT", kind="int", process=True)
    #: Event loop: "auto" (uvloop if installed), "asyncio" or "uvloop" (CLI only).
    loop: str = option(
        "auto", "--loop", help="event loop (auto = uvloop if installed)", kind="choice",
        choices=("auto", "asyncio", "uvloop"), process=True,
    )
    #: Log level of the ``fastws`` loggers (CLI only).
    log_level: str = option(
        "info", "--log-level", help="log level", kind="choice",
        choices=("critical", "error", "warning", "info", "debug", "trace"), process=True,
    )
    #: Serve on this already-open listening socket (a file descriptor
    #: passed by a process manager, e.g. systemd socket activation) instead
    #: of binding host/port (CLI only).
    fd: int | None = option(None, "--fd", help="serve on this inherited listening socket instead of binding", kind="int", process=True)
    #: Logging configuration file (CLI only): ``.json`` or ``.yaml`` for
    #: ``logging.config.dictConfig``, anything else for ``fileConfig``
    #: (``.ini``). It then decides levels and handlers; ``--log-level`` is
    #: not applied.
    log_config: str | None = option(
        None, "--log-config", help="logging config: .json/.yaml (dictConfig) or .ini (fileConfig)", kind="str",
        metavar="PATH", process=True,
    )
    #: Listen backlog passed to ``listen()``.
    backlog: int = option(2048, "--backlog", help="listen backlog", kind="int")
    #: Log one line per connection (logger ``fastws.access``).
    access_log: bool = option(True, "--no-access-log", help="no log line per connection", kind="no")
    #: ``Server`` header of every response (101 and HTTP errors); ``None``
    #: sends none.
    server_header: str | None = option(
        "fastws", "--server-header", help="Server header of every response; 'none' sends none", kind="str"
    )

    #: Origins allowed to open a WebSocket (defence against cross-site
    #: WebSocket hijacking): any other ``Origin`` gets 403. ``None`` in the
    #: list admits requests without ``Origin`` (non-browser clients); the
    #: API also takes ``re.Pattern``s. ``None``: no check.
    origins: "tuple[str | re.Pattern[str] | None, ...] | None" = option(
        None, "--origins", help="comma-separated origins allowed (others get 403); 'none' in the list admits "
        "requests without Origin, 'none' alone turns the check off", kind="list", metavar="ORIGINS",
    )

    # -- behind a reverse proxy (uvicorn's flags), docs/deployment.md ----
    #: Believe ``X-Forwarded-For`` / ``X-Forwarded-Proto`` and RFC 7239
    #: ``Forwarded`` from the proxies in ``forwarded_allow_ips``: the
    #: connection's ``remote_address`` and ``scheme`` (and the access log)
    #: then show the real client.
    proxy_headers: bool = option(
        True, "--proxy-headers", help="take the client address and scheme from the forwarding headers of trusted proxies",
        kind="flag",
    )
    #: Proxies whose forwarding headers are trusted: IP addresses, networks
    #: (``10.0.0.0/8``), ``unix`` (peers on a Unix socket) or ``*`` (any
    #: peer: only when nothing but the proxy can reach the server).
    forwarded_allow_ips: tuple[str, ...] = option(
        ("127.0.0.1", "::1"), "--forwarded-allow-ips",
        help="comma-separated proxy IPs/networks to trust forwarding headers from ('*': all; env FORWARDED_ALLOW_IPS)",
        kind="list", metavar="IPS", env="FORWARDED_ALLOW_IPS",
    )

    # -- TLS (wss://), uvicorn's flag names ------------------------------
    #: PEM private key and certificate chain: with both, the server speaks
    #: TLS (wss://), 1.2 or newer. ``serve(ssl=context)`` takes a ready
    #: ``ssl.SSLContext`` instead.
    ssl_keyfile: str | None = option(None, "--ssl-keyfile", help="TLS private key (PEM)", kind="str", metavar="PATH")
    ssl_certfile: str | None = option(None, "--ssl-certfile", help="TLS certificate chain (PEM)", kind="str", metavar="PATH")
    #: Password of an encrypted ``ssl_keyfile``.
    ssl_keyfile_password: str | None = option(
        None, "--ssl-keyfile-password", help="password of an encrypted TLS key", kind="str", metavar="PASSWORD"
    )
    #: CA bundle to verify client certificates with (then they are required).
    ssl_ca_certs: str | None = option(
        None, "--ssl-ca-certs", help="CA certificates (PEM) that client certificates must chain to", kind="str", metavar="PATH"
    )
    #: OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's);
    #: ``None``: Python's secure default list.
    ssl_ciphers: str | None = option(
        None, "--ssl-ciphers", help="OpenSSL cipher list for TLS 1.2; default: Python's", kind="str", metavar="CIPHERS"
    )

    # -- limits -------------------------------------------------------
    #: Most connections served at once (handshakes past their request, and
    #: open WebSockets); more get 503 before the upgrade. ``None``: no limit.
    limit_concurrency: int | None = option(
        None, "--limit-concurrency", help="most connections at once; more get 503", kind="int"
    )
    #: Most connections at once from one client address (the real client's
    #: behind a trusted proxy); more get 429 before the upgrade. ``None``:
    #: no limit.
    limit_per_ip: int | None = option(
        None, "--limit-per-ip", help="most connections at once from one client address; more get 429", kind="int"
    )
    #: Largest message (reassembled payload) accepted, in bytes; over it the
    #: connection is closed with 1009. ``None``: no limit.
    max_message_size: int | None = option(
        2**20, "--max-message-size", "--ws-max-size", help="largest message in bytes, e.g. 1MiB; 'none' for no limit", kind="size"
    )
    #: Largest request line + header block of the handshake, in bytes; over
    #: it the server answers 431.
    max_header_size: int = option(16 * 1024, "--max-header-size", help="largest handshake header block in bytes", kind="size")
    #: Seconds a client has to complete its opening handshake.
    open_timeout: float | None = option(10.0, "--open-timeout", help="seconds to complete the handshake", kind="seconds")
    #: Seconds to wait for the peer's close frame (and TCP close) after ours;
    #: also how long a server that stops waits for its connections.
    close_timeout: float | None = option(
        10.0, "--timeout-graceful-shutdown", "--close-timeout",
        help="seconds to wait for clients to close on shutdown", kind="seconds",
    )
    #: Close code sent to every connection when the server stops on SIGTERM /
    #: SIGINT: 1001 (going away), or 1012 (service restart) so clients know
    #: to reconnect soon (CLI; ``server.close(code=...)`` in a program).
    shutdown_close_code: int = option(
        CloseCode.GOING_AWAY, "--shutdown-close-code", help="close code sent to every connection on shutdown (1001 or 1012)", kind="int",
        process=True,
    )
    #: High-water mark of a connection's write buffer, in bytes: above it the
    #: connection stops reading from the peer (callback level) and
    #: ``await send()`` waits (coroutine level) until it drains.
    write_limit: int = option(
        64 * 1024, "--write-limit", help="write buffer high-water mark per connection; above it reading from that peer pauses", kind="size"
    )
    #: Hard cap of a connection's write buffer, in bytes; a peer that lets
    #: more pile up (it does not read) is disconnected. ``None``: no cap.
    max_write_buffer: int | None = option(
        16 * 2**20, "--max-write-buffer",
        help="write buffer cap per connection; a peer that lets more pile up is dropped; 'none' for no cap", kind="size",
    )
    #: Coroutine level: messages held for a handler that has not called
    #: ``recv()`` yet before reading from the socket pauses.
    max_queue: int | None = option(
        16, "--ws-max-queue", help="coroutine level: queued messages before reading pauses", kind="int"
    )
    #: Keepalive at both levels: seconds between pings, and seconds to wait
    #: for the pong before closing with 1011. ``None``: off.
    ping_interval: float | None = option(
        20.0, "--ws-ping-interval", help="seconds between keepalive pings", kind="seconds"
    )
    ping_timeout: float | None = option(
        20.0, "--ws-ping-timeout", help="seconds to wait for a keepalive pong before closing with 1011", kind="seconds"
    )

    #: Close a connection (1000 "idle timeout") that sent no message for
    #: this many seconds (between 1 and 1.25 times it; pings and pongs do
    #: not count). ``None``: off.
    idle_timeout: float | None = option(
        None, "--ws-idle-timeout", help="close connections that sent no message for this long", kind="seconds"
    )

    # -- observability, docs/observability.md ----------------------------
    #: Serve Prometheus metrics at ``/metrics`` (on the server's port, or
    #: on ``metrics_port``). Counting costs a few C increments per message.
    metrics: bool = option(False, "--metrics", help="serve Prometheus metrics at /metrics", kind="flag")
    #: Serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port of
    #: ``host`` instead (turns metrics on).
    metrics_port: int | None = option(
        None, "--metrics-port", help="serve /metrics, /healthz and /readyz on this port instead (turns --metrics on)", kind="int"
    )
    #: Answer ``GET /healthz`` (200 while the process runs) and ``GET
    #: /readyz`` (200 while accepting, 503 while draining).
    health: bool = option(True, "--health", help="answer GET /healthz and /readyz", kind="flag")
    #: Serve the live dashboard at ``/fastws/dashboard`` (turns metrics
    #: on). Without ``dashboard_token`` only loopback clients may open it.
    dashboard: bool = option(False, "--dashboard", help="serve the live dashboard at /fastws/dashboard", kind="flag")
    #: Token the dashboard asks for (``?token=...``); then any client with
    #: it may open the dashboard.
    dashboard_token: str | None = option(
        None, "--dashboard-token", help="token for the dashboard (?token=...); without one, loopback clients only", kind="str",
        metavar="TOKEN",
    )

    # -- permessage-deflate (RFC 7692), docs/compression.md --------------
    #: Negotiate permessage-deflate with clients that offer it:
    #: ``"deflate"``, or ``None`` to decline every offer.
    compression: str | None = option(
        "deflate", "--ws-per-message-deflate", help="negotiate permessage-deflate compression with clients that offer it",
        kind="switch", on="deflate", off=None,
    )
    #: LZ77 window of the server's compressor, as log2 bytes (8-15; 12 =
    #: 4 KiB). A client may ask for less, never more.
    deflate_server_max_window_bits: int = option(
        12, "--ws-deflate-server-max-window-bits", help="log2 of the server compressor's window (8-15)", kind="int"
    )
    #: Window asked of clients that allow it (8-15); ``None``: don't ask
    #: (they may use 15, and the server inflates with a 32 KiB window).
    deflate_client_max_window_bits: int | None = option(
        12, "--ws-deflate-client-max-window-bits", help="log2 of the window asked of clients (8-15); 'none' asks nothing", kind="int"
    )
    #: Reset the compressor (server) / ask clients to reset theirs after
    #: every message: zlib memory is then freed between messages, at the
    #: cost of compression across similar messages.
    deflate_server_no_context_takeover: bool = option(
        False, "--ws-deflate-server-no-context-takeover", help="reset the server's compressor after every message",
        kind="switch",
    )
    deflate_client_no_context_takeover: bool = option(
        False, "--ws-deflate-client-no-context-takeover", help="ask clients to reset their compressor after every message",
        kind="switch",
    )
    #: zlib compression level (0-9, -1 = zlib's default 6) and memLevel (1-9;
    #: 5 = a 16 KiB hash table) of the server's compressor.
    deflate_level: int = option(6, "--ws-deflate-level", help="zlib compression level (0-9, -1 = zlib's default)", kind="int")
    deflate_mem_level: int = option(5, "--ws-deflate-mem-level", help="zlib memLevel of the compressor (1-9)", kind="int")
    #: Messages shorter than this (bytes) are sent uncompressed, which RFC
    #: 7692 allows for any message.
    deflate_min_size: int = option(32, "--ws-deflate-min-size", help="messages shorter than this are sent uncompressed", kind="size")

    # -- rooms and pub/sub (ws.subscribe, publish), docs/scaling.md ------
    #: Where rooms meet: ``"memory"`` (this process), ``"workers"`` (the
    #: ``--workers N`` processes of one server, through the supervisor),
    #: ``"redis://host:port/db"`` (``rediss://`` for TLS) or
    #: ``"redis+cluster://host:port"`` (sharded pub/sub, Redis 7+).
    broker: str = option(
        "memory", "--broker", help="rooms backend: memory, workers, redis://host:port/db or redis+cluster://host:port",
        kind="str", metavar="URL",
    )
    #: Prefix of every Redis channel and key fastws uses (several
    #: applications can share one Redis).
    broker_prefix: str = option("fastws:", "--broker-prefix", help="prefix of the Redis channels and keys", kind="str")
    #: Messages a node holds while its broker is unreachable, published
    #: when it is back; past this the oldest are dropped (and counted).
    broker_queue: int = option(
        10_000, "--broker-queue", help="messages held while the broker is unreachable (oldest dropped past it)", kind="int"
    )
    #: Bytes a room member may have waiting to be written before the slow
    #: receiver policy applies to it.
    room_max_buffer: int = option(
        2**20, "--room-max-buffer", help="buffered bytes per room member before the slow-receiver policy applies", kind="size"
    )
    #: What happens to a member past ``room_max_buffer``: ``"close"`` (1013
    #: Try Again Later) or ``"drop"`` (it misses messages, counted).
    room_slow_policy: str = option(
        "close", "--room-slow-policy", help="a member past --room-max-buffer: close it (1013) or drop messages to it",
        kind="choice", choices=("close", "drop"),
    )
    #: Keep each room's recent messages in a Redis stream, so that a client
    #: that comes back with its last offset gets what it missed (Redis
    #: brokers only). Messages then reach clients as ``"<offset> <message>"``.
    room_history: bool = option(False, "--room-history", help="keep recent room messages in Redis for resuming (redis brokers)", kind="flag")
    #: Messages kept per room (approximately: Redis trims in whole nodes).
    room_history_size: int = option(1_000, "--room-history-size", help="messages kept per room with --room-history", kind="int")
    #: Seconds a room's history outlives its last message.
    room_history_ttl: float = option(
        300.0, "--room-history-ttl", help="seconds a room's history is kept after its last message", kind="seconds"
    )
    #: Track who is in each room across all nodes (``await
    #: server.presence(room)``).
    presence: bool = option(False, "--presence", help="track room members across nodes (server.presence)", kind="flag")
    #: Seconds a member stays listed after its node stops refreshing it
    #: (a dead node's members expire after this).
    presence_ttl: float = option(15.0, "--presence-ttl", help="seconds a dead node's members stay listed", kind="seconds")

    # -- the HTTP fallback (SSE + POST, long-polling), docs/fallback.md --
    #: Also serve clients that cannot upgrade (proxies that strip
    #: ``Upgrade``) over HTTP: Server-Sent Events down and POST up, or
    #: long-polling, under ``/_fastws/``; ``fastws.js`` picks the transport.
    fallback: bool = option(False, "--fallback", help="serve HTTP fallback transports (SSE + POST, long-polling) for fastws.js", kind="flag")
    #: A fallback session with no request in progress for this long is
    #: closed (the handler sees 1006).
    fallback_timeout: float = option(
        10.0, "--fallback-timeout", help="close a fallback session with no request for this long", kind="seconds"
    )
    #: Bytes of messages a fallback session holds that the client has not
    #: acknowledged; above half of it the session is not writable, past it
    #: the session is closed with 1013.
    fallback_max_outbox: int = option(
        2**20, "--fallback-max-outbox", help="unacknowledged bytes a fallback session holds before closing with 1013", kind="size"
    )
    #: The same bound in messages.
    fallback_max_outbox_messages: int = option(
        1_000, "--fallback-max-outbox-messages", help="unacknowledged messages a fallback session holds", kind="int"
    )
    #: Largest POST body of the fallback (413 above).
    fallback_max_body: int = option(2**20, "--fallback-max-body", help="largest fallback POST body (413 above)", kind="size")

    def __post_init__(self) -> None:
        if self.origins is not None:
            if isinstance(self.origins, (str, re.Pattern)):
                raise TypeError("origins must be a list of origins, not a single one")
            # A tuple: the Config stays hashable and cannot change under a server.
            object.__setattr__(self, "origins", tuple(self.origins))
        if isinstance(self.forwarded_allow_ips, str):
            raise TypeError("forwarded_allow_ips must be a list of addresses, not a single string")
        object.__setattr__(self, "forwarded_allow_ips", tuple(self.forwarded_allow_ips))
        for entry in self.forwarded_allow_ips:
            if not isinstance(entry, str):
                raise ValueError(f"forwarded_allow_ips: {entry!r} is not an IP address, a network, '*' or 'unix'")
            proxy_entry(entry)  # raises ValueError naming a bad entry
        if self.fd is not None and self.fd < 0:
            raise ValueError("fd must be a file descriptor (>= 0)")
        for name in ("max_message_size", "max_write_buffer", "max_queue", "limit_concurrency", "limit_per_ip"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, or None for no limit")
        for name in ("max_header_size", "write_limit", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be between 0 and 65535")
        for name in ("open_timeout", "close_timeout", "ping_interval", "ping_timeout", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, or None for off")
        shutdown_codes = (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER)
        if self.shutdown_close_code not in shutdown_codes and not 4000 <= self.shutdown_close_code <= 4999:
            raise ValueError("shutdown_close_code must be 1000, 1001, 1012, 1013 or an application code 4000-4999")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.backlog < 0:
            raise ValueError("backlog must be >= 0")
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ValueError("ssl_keyfile and ssl_certfile go together: give both for TLS, or neither")
        if self.compression not in (None, "deflate"):
            raise ValueError(f"unsupported compression: {self.compression!r} (use 'deflate' or None)")
        if not 8 <= self.deflate_server_max_window_bits <= 15:
            raise ValueError("deflate_server_max_window_bits must be between 8 and 15")
        bits = self.deflate_client_max_window_bits
        if bits is not None and not 8 <= bits <= 15:
            raise ValueError("deflate_client_max_window_bits must be between 8 and 15, or None")
        if not -1 <= self.deflate_level <= 9:
            raise ValueError("deflate_level must be between -1 and 9")
        if not 1 <= self.deflate_mem_level <= 9:
            raise ValueError("deflate_mem_level must be between 1 and 9")
        if self.deflate_min_size < 0:
            raise ValueError("deflate_min_size must be >= 0")
        broker = self.broker
        if not (broker in ("memory", "workers") or broker.startswith(("redis://", "rediss://", "redis+cluster://"))):
            raise ValueError(f"broker must be memory, workers, redis://..., rediss://... or redis+cluster://...; got {broker!r}")
        if self.room_max_buffer < self.write_limit:
            # A member's own batch (up to write_limit) would count as waiting.
            raise ValueError(f"room_max_buffer ({self.room_max_buffer}) must be at least write_limit ({self.write_limit})")
        if self.room_slow_policy not in ("close", "drop"):
            raise ValueError("room_slow_policy must be 'close' or 'drop'")
        for name in ("room_max_buffer", "room_history_size", "broker_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("room_history_ttl", "presence_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        for name in ("fallback_max_outbox", "fallback_max_outbox_messages", "fallback_max_body"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.fallback_timeout <= 0:
            raise ValueError("fallback_timeout must be a positive number of seconds")
        if self.room_history and not broker.startswith(("redis://", "rediss://", "redis+cluster://")):
            raise ValueError("room_history keeps messages in Redis: it needs a redis:// or redis+cluster:// broker")

    @property
    def counting(self) -> bool:
        """Whether the server keeps counters (metrics or the dashboard)."""
        return self.metrics or self.metrics_port is not None or self.dashboard

    def replace(self, **changes: object) -> "Config":
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def proxy_entry(text: str) -> "str | ipaddress.IPv4Network | ipaddress.IPv6Network":
    """One ``forwarded_allow_ips`` entry: ``"*"``, ``"unix"``, or an IP
    network (an address is a network of one). ValueError names a bad one."""
    entry = text.strip()
    if entry == "*" or entry.lower() == "unix":
        return entry.lower()
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"forwarded_allow_ips: {entry!r} is not an IP address, a network, '*' or 'unix'") from None


def options() -> list[tuple[dataclasses.Field[Any], Option]]:
    """Every Config field with its CLI description, in declaration order."""
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(Config)]


DEFAULTS = Config()
