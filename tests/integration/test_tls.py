"""wss://: TLS from the ``ssl_*`` options and the ``--ssl-*`` flags (uvicorn's
names), with the real ``websockets`` client over TLS.

The certificates are made here by the ``openssl`` command (``.ci/run``
installs it): a self-signed one for localhost and 127.0.0.1, which the client
trusts as its CA, and the same key encrypted with a password.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage

import fastws
from fastws.demo import EchoHandler
from fastws.server import tls_context

from ..conftest import ServerProcess, serving, unit

pytestmark = pytest.mark.timeout(60)

PASSWORD = "s3cret"


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed (apt-get install openssl; .ci/run does)")
    subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """cert.pem, key.pem and key-encrypted.pem (password PASSWORD)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key, enc = folder / "cert.pem", folder / "key.pem", folder / "key-encrypted.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    )  # fmt: skip
    _openssl("pkey", "-in", str(key), "-out", str(enc), "-aes256", "-passout", f"pass:{PASSWORD}")
    return {"cert": str(cert), "key": str(key), "encrypted": str(enc)}


def client_context(certs: dict[str, str], **extra: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs["cert"])
    for name, value in extra.items():
        setattr(context, name, value)
    return context


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.mark.parametrize("handler", [EchoHandler, echo], ids=["callback", "coroutine"])
async def test_wss_echo_at_both_levels(certs: dict[str, str], handler: Any) -> None:
    async with serving(handler, ssl_certfile=certs["cert"], ssl_keyfile=certs["key"]) as (_, url):
        wss = url.replace("ws://", "wss://")
        async with connect(wss, ssl=client_context(certs)) as ws:
            assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
            await ws.send(b"\x00" * 100_000)
            assert await ws.recv() == b"\x00" * 100_000


async def test_ssl_context_passed_by_the_user_is_used(certs: dict[str, str]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs["cert"], certs["key"])
    async with serving(echo, ssl=context) as (_, url):
        async with connect(url.replace("ws://", "wss://"), ssl=client_context(certs)) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"


def test_tls_12_or_newer_by_default(certs: dict[str, str]) -> None:
    context = tls_context(fastws.Config(ssl_certfile=certs["cert"], ssl_keyfile=certs["key"]))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls_context(fastws.Config()) is None


async def test_tls_11_client_is_refused(certs: dict[str, str]) -> None:
    async with serving(echo, ssl_certfile=certs["cert"], ssl_keyfile=certs["key"]) as (_, url):
        old = client_context(certs)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
                old.minimum_version = ssl.TLSVersion.TLSv1
                old.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot even offer TLS 1.1")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            async with connect(url.replace("ws://", "wss://"), ssl=old, open_timeout=unit(5)):
                pass


async def test_client_certificates_required_with_ca_certs(certs: dict[str, str]) -> None:
    options = dict(ssl_certfile=certs["cert"], ssl_keyfile=certs["key"], ssl_ca_certs=certs["cert"])
    async with serving(echo, **options) as (_, url):
        wss = url.replace("ws://", "wss://")
        # Without a client certificate the server ends the TLS handshake (with
        # TLS 1.3 the client learns it only when it reads: no HTTP answer).
        with pytest.raises((ssl.SSLError, ConnectionError, OSError, EOFError, InvalidMessage)):
            async with connect(wss, ssl=client_context(certs), open_timeout=unit(5)) as ws:
                await ws.send("x")
                await ws.recv()
        with_cert = client_context(certs)
        with_cert.load_cert_chain(certs["cert"], certs["key"])
        async with connect(wss, ssl=with_cert) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"


def test_keyfile_and_certfile_go_together(certs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="ssl_keyfile and ssl_certfile"):
        fastws.Config(ssl_certfile=certs["cert"])


async def test_cli_serves_wss(certs: dict[str, str]) -> None:
    server = ServerProcess("--ssl-certfile", certs["cert"], "--ssl-keyfile", certs["encrypted"],
                           "--ssl-keyfile-password", PASSWORD).start()  # fmt: skip
    try:
        assert any(f"on wss://127.0.0.1:{server.port} " in line for line in server.lines), server.output
        async with connect(f"wss://127.0.0.1:{server.port}/", ssl=client_context(certs)) as ws:
            await ws.send("cli over tls")
            assert await ws.recv() == "cli over tls"
    finally:
        assert server.stop() == 0, server.output


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--ssl-keyfile-password", "wrong"], ["TLS", "--ssl-certfile"]),
        (["--ssl-ciphers", "NO-SUCH-CIPHER"], ["TLS"]),
        (["--ssl-ca-certs", "/no/such/ca.pem"], ["TLS", "--ssl-ca-certs", "'/no/such/ca.pem'", "no such file"]),
    ],
    ids=["wrong-password", "bad-ciphers", "missing-file"],
)
def test_cli_tls_errors_are_one_line(certs: dict[str, str], flags: list[str], words: list[str]) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fastws", "serve", "--port", "0", "--ssl-certfile", certs["cert"],
         "--ssl-keyfile", certs["encrypted"], *flags],
        capture_output=True, text=True, timeout=unit(30), cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert res.returncode == 2, (res.stdout, res.stderr)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fastws: error: TLS"), res.stderr
    assert all(w in last for w in words), last
    assert "Traceback" not in res.stderr


def test_cli_certfile_without_keyfile_is_a_usage_error(certs: dict[str, str]) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fastws", "serve", "--port", "0", "--ssl-certfile", certs["cert"]],
        capture_output=True, text=True, timeout=unit(30), cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "--ssl-keyfile and --ssl-certfile go together" in res.stderr
