"""fastws behind a real nginx, configured as docs/deployment.md says.

Each test writes a user's ``app.py`` into its tmp_path and serves it with
``python -m fastws serve app:...`` from there, as a user does, then starts
an nginx of its own in front: not a daemon, on free loopback ports, its pid,
logs and temporary files under the test's tmp_path. The nginx configuration
is read from docs/deployment.md with only the ports and certificate paths
changed, and one test runs the systemd unit's ExecStart line: when the page
goes wrong, these tests fail. Every test runs twice, with nginx serving
plain ws and with nginx terminating TLS (wss) in front of plain fastws.

Clients connect from 127.0.0.5 where the address matters (Linux routes all
of 127/8 to lo), so the client, nginx (127.0.0.1) and a forged header
(203.0.113.9) are three different answers. Without nginx the tests are
skipped, unless CI=true: then they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..conftest import ROOT, ServerProcess, unit
from .conftest import cli_codec, eventually, free_port
from .test_tls import certs, client_context  # noqa: F401  (certs: the fixture, a cert for 127.0.0.1)

pytestmark = pytest.mark.timeout(60)

DOC = Path(ROOT, "docs", "deployment.md")

#: The user's app.py. ``handler`` is the name the systemd unit serves.
APP = '''\
import json

from fastws import Handler


class App(Handler):
    """Echo; "who am i?" gets the address and scheme fastws sees."""

    def on_message(self, ws, data, is_text):
        print(f"app: message of {len(data)} bytes", flush=True)
        if data == b"who am i?":
            ws.send(json.dumps({"ip": ws.remote_address[0], "scheme": ws.scheme}))
        elif data == b"close with 4001":
            ws.close(4001, "server closes")
        else:
            ws.send(data, is_text)

    def on_close(self, ws, code, reason):
        print(f"app: closed {code} {reason}", flush=True)


handler = App


async def echo(ws):
    """The coroutine level, which sends keepalive pings."""
    async for message in ws:
        await ws.send(message)
'''

#: Headers a client forges; the documented nginx config must not let them through.
FORGED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "Forwarded": "for=203.0.113.9;proto=https"}
CLIENT_IP = "127.0.0.5"

#: nginx's own file, around the site configuration from the docs.
NGINX_CONF = """\
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
worker_processes 1;
worker_shutdown_timeout 5s;
events {{
    worker_connections 64;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    include {prefix}/site.conf;
}}
"""


# -- the documentation -----------------------------------------------------------


def doc_block(first_line: str) -> str:
    """The fenced code block of docs/deployment.md whose first line is ``first_line``."""
    blocks = re.findall(r"^```[\w-]*\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)
    found = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(found) == 1, f"{DOC} should have one code block starting {first_line!r}"
    return str(found[0])


def substitute(text: str, changes: dict[str, str]) -> str:
    """``text`` with each key replaced by its value; every key must be there."""
    for old, new in changes.items():
        assert old in text, f"{DOC} no longer has {old!r}: update this test with it"
        text = text.replace(old, new)
    return text


# -- processes ------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("nginx is not installed (apt-get install nginx; .ci/run does)")
    pytest.skip("nginx is not installed (apt-get install nginx); with CI=true this is a failure")


def wait_listening(port: int, proc: subprocess.Popen[Any], diagnose: Callable[[], str]) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + unit(10)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=unit(1)).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on port {port}:\n{diagnose()}") from None
            time.sleep(0.02)


class Nginx:
    """``nginx -g 'daemon off;'`` with everything it writes under ``prefix``."""

    def __init__(self, prefix: Path, site: str, port: int) -> None:
        self.prefix, self.port = prefix, port
        prefix.mkdir()
        (prefix / "site.conf").write_text(site)
        (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix))
        with open(prefix / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(
                [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its own process group: the workers go with it
            )
        wait_listening(port, self.proc, self.logs)

    def logs(self) -> str:
        return "\n".join(
            f"--- nginx {name}:\n{(self.prefix / name).read_text(errors='replace')}"
            for name in ("stderr.log", "error.log")
            if (self.prefix / name).exists()
        )

    def stop(self) -> None:
        """Graceful stop (SIGQUIT); then kill the master and its workers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(unit(10))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- nginx in front of fastws ------------------------------------------------------


@dataclass(frozen=True)
class Front:
    """How nginx faces the clients: a configuration of the docs."""

    conf: str  # the first line of its code block
    scheme: str  # of the clients' URL, and what ws.scheme should say


FRONTS = [Front("# /etc/nginx/conf.d/fastws.conf", "ws"), Front("# /etc/nginx/conf.d/fastws-tls.conf", "wss")]


@dataclass
class Site:
    """fastws and the nginx in front of it, as the clients of a test see them."""

    server: ServerProcess
    url: str
    ssl: ssl.SSLContext | None
    nginx: Nginx

    def connect(self, path: str = "/", **options: Any) -> connect:
        """A websockets client of nginx (no size limit, test-sized timeouts)."""
        return connect(
            self.url + path, ssl=self.ssl, proxy=None, max_size=None,
            open_timeout=unit(5), close_timeout=unit(5), **options,
        )  # fmt: skip

    async def wait_for_output(self, pattern: str) -> None:
        """Wait until fastws' output (stdout and stderr) matches ``pattern``."""
        try:
            await eventually(lambda: re.search(pattern, self.server.output), what=repr(pattern))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; fastws said:\n{self.server.output}") from None


@pytest.fixture(params=FRONTS, ids=["plain", "tls"])
def front(request: pytest.FixtureRequest) -> Front:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def deploy(front: Front, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Site]]:
    """Start ``python -m fastws serve ARGS`` in tmp_path (app.py is there)
    and the documented nginx in front of it; ``nginx=`` changes more of the
    documented config. Both are stopped at teardown, fastws first."""
    (tmp_path / "app.py").write_text(APP)
    started: list[Site] = []

    def start(*args: str, nginx: dict[str, str] | None = None) -> Site:
        nginx_binary()  # skip (or fail on CI) before starting anything
        server = ServerProcess(*args, codec=cli_codec(), cwd=tmp_path)
        server.start()
        assert server.proc is not None
        # With --workers the start line may come before a worker listens.
        wait_listening(server.port, server.proc, lambda: server.output)
        port = free_port()
        changes = {"server 127.0.0.1:8000;": f"server 127.0.0.1:{server.port};"}
        context = None
        if front.scheme == "wss":
            cert = request.getfixturevalue("certs")
            context = client_context(cert)
            changes |= {
                "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
                "listen 80;": f"listen 127.0.0.1:{free_port()};",
                "/etc/letsencrypt/live/example.com/fullchain.pem": cert["cert"],
                "/etc/letsencrypt/live/example.com/privkey.pem": cert["key"],
            }
        else:
            changes["listen 80;"] = f"listen 127.0.0.1:{port};"
        site_conf = substitute(doc_block(front.conf), changes | (nginx or {}))
        try:
            proxy = Nginx(tmp_path / f"nginx{len(started)}", site_conf, port)
        except BaseException:
            server.stop()
            raise
        started.append(Site(server, f"{front.scheme}://127.0.0.1:{port}", context, proxy))
        return started[-1]

    yield start
    for site in started:
        if site.server.proc is not None and site.server.proc.poll() is None:
            site.server.stop()
        site.nginx.stop()


# -- client helpers ------------------------------------------------------------


async def receive(ws: ClientConnection) -> Any:
    return await asyncio.wait_for(ws.recv(), unit(10))


async def who_am_i(ws: ClientConnection) -> dict[str, str]:
    """The address and scheme the app sees for this client."""
    await ws.send("who am i?")
    return json.loads(await receive(ws))  # type: ignore[no-any-return]


async def close_received(ws: ClientConnection) -> tuple[int, str] | None:
    """Wait for the end of the connection: the close frame received, as
    (code, reason), or None when the TCP connection ended without one."""
    with pytest.raises(ConnectionClosed) as closed:
        await receive(ws)
    frame = closed.value.rcvd
    return None if frame is None else (frame.code, frame.reason)


async def stop_and_exit_status(site: Site) -> int:
    """SIGTERM to fastws' main process (systemd's KillMode=mixed); its exit status."""
    assert site.server.proc is not None
    site.server.proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(site.server.proc.wait, unit(15))


# -- messages and close codes ------------------------------------------------------


async def test_echo_text_and_binary(deploy: Callable[..., Site]) -> None:
    site = deploy("app:handler")
    async with site.connect() as ws:
        await ws.send("h\u00e9llo")
        assert await receive(ws) == "h\u00e9llo"
        await ws.send(b"\x00\xff" * 1000)
        assert await receive(ws) == b"\x00\xff" * 1000


async def test_4_mib_echoed_and_over_max_size_gets_1009(deploy: Callable[..., Site]) -> None:
    site = deploy("app:handler", "--ws-max-size", "8MiB")
    big = os.urandom(4 * 2**20)
    async with site.connect() as ws:
        await ws.send(big)
        assert await receive(ws) == big
        await ws.send(b"x" * (8 * 2**20 + 1))
        closed = await close_received(ws)
    assert closed is not None and closed[0] == 1009, closed


async def test_client_close_code_reaches_the_handler(deploy: Callable[..., Site]) -> None:
    site = deploy("app:handler")
    async with site.connect() as ws:
        await ws.close(4000, "bye")
    await site.wait_for_output(r"app: closed 4000 bye")


async def test_handler_close_code_reaches_the_client(deploy: Callable[..., Site]) -> None:
    site = deploy("app:handler")
    async with site.connect() as ws:
        await ws.send("close with 4001")
        assert await close_received(ws) == (4001, "server closes")


async def test_aiohttp_client(deploy: Callable[..., Site]) -> None:
    site = deploy("app:handler")
    timeout = aiohttp.ClientWSTimeout(ws_close=unit(5))
    async with aiohttp.ClientSession() as session, session.ws_connect(site.url, ssl=site.ssl or True, timeout=timeout) as ws:
        await ws.send_str("h\u00e9llo")
        assert await ws.receive_str(timeout=unit(10)) == "h\u00e9llo"
        await ws.send_bytes(b"\x00\xff" * 1000)
        assert await ws.receive_bytes(timeout=unit(10)) == b"\x00\xff" * 1000
        await ws.close(code=4000, message=b"bye")
    await site.wait_for_output(r"app: closed 4000 bye")


# -- proxy headers and limits ------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False], ids=["nginx-trusted", "nginx-untrusted"])
async def test_client_address_and_scheme(deploy: Callable[..., Site], front: Front, trusted: bool) -> None:
    """Through a trusted nginx the app sees the client (not nginx, not what
    the client forged) and the scheme the client used; through an untrusted
    one it sees nginx and its own plain ws."""
    site = deploy("app:handler", *([] if trusted else ["--forwarded-allow-ips", "10.9.9.9"]))
    async with site.connect("/whoami", local_addr=(CLIENT_IP, 0), additional_headers=FORGED) as ws:
        seen = await who_am_i(ws)
    expected = {"ip": CLIENT_IP, "scheme": front.scheme} if trusted else {"ip": "127.0.0.1", "scheme": "ws"}
    assert seen == expected
    access = r'conn \d+ 127\.0\.0\.5:0 "GET /whoami" 101' if trusted else r'conn \d+ 127\.0\.0\.1:\d+ "GET /whoami" 101'
    await site.wait_for_output(access)


async def test_limit_per_ip_counts_clients_not_nginx(deploy: Callable[..., Site]) -> None:
    site = deploy("app:handler", "--limit-per-ip", "1")
    async with site.connect(local_addr=(CLIENT_IP, 0)):
        with pytest.raises(InvalidStatus) as refused:
            async with site.connect(local_addr=(CLIENT_IP, 0)):
                pass
        assert refused.value.response.status_code == 429
        async with site.connect(local_addr=("127.0.0.6", 0)) as other:
            assert (await who_am_i(other))["ip"] == "127.0.0.6"


# -- timeouts and shutdown ---------------------------------------------------------


@pytest.mark.parametrize("pings", [True, False], ids=["pings", "no-pings"])
async def test_pings_keep_a_quiet_connection_past_proxy_read_timeout(deploy: Callable[..., Site], pings: bool) -> None:
    """Why proxy_read_timeout must be above --ws-ping-interval: nginx cuts a
    connection on which fastws sends nothing for that long (1006)."""
    interval = "0.5" if pings else "none"
    site = deploy("app:echo", "--ws-ping-interval", interval, nginx={"proxy_read_timeout 60s;": "proxy_read_timeout 2s;"})
    async with site.connect(ping_interval=None) as ws:
        await asyncio.sleep(unit(3))
        if pings:
            await ws.send("still here")
            assert await receive(ws) == "still here"
        else:
            assert await close_received(ws) is None


@pytest.mark.parametrize("code", [1001, 1012])
async def test_sigterm_closes_clients_through_nginx(deploy: Callable[..., Site], code: int) -> None:
    """What the handler sent before SIGTERM arrives, then the close frame."""
    site = deploy("app:handler", *([] if code == 1001 else ["--shutdown-close-code", str(code)]))
    last = os.urandom(2**19)
    async with site.connect() as ws:
        await ws.send(last)
        await site.wait_for_output(f"app: message of {len(last)} bytes")
        status = await stop_and_exit_status(site)
        assert await receive(ws) == last
        assert await close_received(ws) == (code, "")
    assert status == 0, site.server.output


async def test_documented_systemd_command_line(deploy: Callable[..., Site]) -> None:
    """The unit's ExecStart (two workers, proxy headers) behind the
    documented nginx, stopped the way the unit stops it."""
    unit_file = doc_block("# /etc/systemd/system/fastws.service")
    exec_start = re.search(r"^ExecStart=\S+ serve (.+)$", unit_file, re.MULTILINE)
    assert exec_start, unit_file
    grace = re.search(r"--timeout-graceful-shutdown (\S+)", exec_start[1])
    stop_timeout = re.search(r"^TimeoutStopSec=(\d+)$", unit_file, re.MULTILINE)
    assert grace and stop_timeout and int(stop_timeout[1]) > float(grace[1]), unit_file
    site = deploy(*shlex.split(substitute(exec_start[1], {"--port 8000": f"--port {free_port()}"})))
    async with site.connect(local_addr=(CLIENT_IP, 0)) as ws:
        assert (await who_am_i(ws))["ip"] == CLIENT_IP
        status = await stop_and_exit_status(site)
        assert await close_received(ws) == (1001, "")
    assert status == 0, site.server.output
