"""wss:// in a real browser: Debian's chromium trusts a test CA made here.

The test makes its own CA (``CA:TRUE``) and a server certificate for
localhost and 127.0.0.1 signed by it, with the ``openssl`` command, and runs
the bundled demo as a user does (``python -m fastws serve --ssl-keyfile ...
--ssl-certfile ...``). Chromium is not told to ignore certificate errors: it
runs with ``HOME`` set to a temporary folder whose NSS database
(``~/.pki/nssdb``, which Chromium on Linux reads) holds the test CA, added
with ``certutil`` (Debian's libnss3-tools). The same Chromium with an NSS
database without the CA must fail to open the wss:// connection, so these
tests catch trust that only seems to work.

Needs chromium, playwright (never ``playwright install``), openssl and
certutil; ``.ci/run`` installs them. When one is missing the tests are
skipped with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastws.demo import EchoHandler

from ..conftest import ServerProcess, serving, unit
from .conftest import cli_codec, eventually
from .test_browser import ARGS, CHROMIUM, async_playwright, type_and_see_echo

pytestmark = pytest.mark.timeout(int(unit(90)))

CA_NAME = "fastws test CA"
NSS_NICKNAME = "fastws-test-ca"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Opens a WebSocket, sends non-ASCII text and bytes, closes with 4000; or
# reports how it failed. Returns what the page saw.
ROUND_TRIP = """async url => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    let error = false;
    ws.onerror = () => { error = true; };
    const closed = new Promise(ok => { ws.onclose = e => ok(e.code); });
    const opened = await Promise.race([
        new Promise(ok => { ws.onopen = () => ok(true); }),
        closed.then(() => false),
    ]);
    if (!opened) return {opened, error, code: await closed, url: ws.url};
    const got = [];
    const both = new Promise(ok => { ws.onmessage = e => { got.push(e.data); if (got.length === 2) ok(); }; });
    ws.send('gr\\u00fc\\u00dfe \\u2603 \\u{1F600}');
    ws.send(new Uint8Array([0, 128, 255]).buffer);
    await both;
    ws.close(4000, 'done');
    return {opened, error, code: await closed, url: ws.url,
            text: got[0], bytes: Array.from(new Uint8Array(got[1]))};
}"""
NON_ASCII = "gr\u00fc\u00dfe \u2603 \U0001f600"


def need(tool: object, what: str) -> None:
    """Skip without ``tool`` (fail under CI=true, where .ci/run installs it)."""
    if tool is None:
        message = f"{what} is needed for the Chromium-over-wss tests"
        if IN_CI:
            pytest.fail(message + " (CI=true: .ci/run installs it)")
        pytest.skip(message)


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=unit(60))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ca.pem (a self-signed CA) and cert.pem / key.pem (localhost and
    127.0.0.1, signed by that CA)."""
    need(CHROMIUM, "chromium (apt-get install -y chromium)")
    need(async_playwright, "playwright (pip install playwright)")
    openssl = shutil.which("openssl")
    need(openssl, "the openssl command (apt-get install -y openssl)")
    assert openssl is not None
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = folder / "ca.pem", folder / "ca-key.pem"
    cert, key, csr, ext = folder / "cert.pem", folder / "key.pem", folder / "cert.csr", folder / "cert.ext"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run(
        openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", f"/CN={CA_NAME}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run(openssl, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    run(
        openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-set_serial", "2", "-days", "2", "-out", str(cert), "-extfile", str(ext),
    )  # fmt: skip
    run(openssl, "verify", "-CAfile", str(ca), str(cert))
    return {"ca": ca, "cert": cert, "key": key}


def nss_home(folder: Path, ca: Path | None) -> Path:
    """A HOME whose ~/.pki/nssdb exists and trusts ``ca`` for TLS servers
    ("C,,"), or trusts nothing extra when ``ca`` is None."""
    certutil = shutil.which("certutil")
    need(certutil, "certutil (apt-get install -y libnss3-tools)")
    assert certutil is not None
    nssdb = folder / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    run(certutil, "-N", "-d", db, "--empty-password")
    if ca is not None:
        run(certutil, "-A", "-d", db, "-n", NSS_NICKNAME, "-t", "C,,", "-i", str(ca))
    listed = subprocess.run([certutil, "-L", "-d", db], check=True, capture_output=True, text=True, timeout=unit(60))
    assert (NSS_NICKNAME in listed.stdout) == (ca is not None), listed.stdout
    return folder


@pytest.fixture(scope="module")
def wss_server(pki: dict[str, Path]) -> Iterator[ServerProcess]:
    """The bundled demo over TLS, started from the command line."""
    server = ServerProcess(
        "--ssl-keyfile", str(pki["key"]), "--ssl-certfile", str(pki["cert"]), "--port", "0", codec=cli_codec()
    ).start()  # fmt: skip
    try:
        assert f"on wss://127.0.0.1:{server.port} " in server.output, server.output
        yield server
    finally:
        assert server.stop() == 0, server.output
    assert "Traceback" not in server.output, server.output


@contextlib.asynccontextmanager
async def chromium(home: Path) -> AsyncIterator[Any]:
    """Debian's chromium, headless, with ``HOME=home`` (so home's NSS
    database is the one it trusts); yields a new page."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            env=dict(os.environ, HOME=str(home)),
            timeout=unit(30) * 1000,
        )
        try:
            page = await browser.new_page()
            page.set_default_timeout(unit(15) * 1000)
            yield page
        finally:
            await browser.close()


async def open_http_demo(page: Any, url: str) -> None:
    """Load the demo page over plain HTTP from loopback: a secure context
    (127.0.0.1) in the same address space as the wss:// server, from which
    only the certificate decides whether a wss:// socket opens."""
    response = await page.goto(url.replace("ws://", "http://") + "/")
    assert response is not None and response.status == 200
    assert await page.evaluate("isSecureContext")


async def test_chromium_trusting_the_test_ca_uses_the_demo_over_wss(
    pki: dict[str, Path], wss_server: ServerProcess, tmp_path: Path
) -> None:
    port = wss_server.port
    origin = f"https://127.0.0.1:{port}"
    async with chromium(nss_home(tmp_path, pki["ca"])) as page:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))

        response = await page.goto(origin + "/")
        assert response is not None and response.status == 200
        details = await response.security_details()
        assert details is not None
        assert details.get("issuer") == CA_NAME, details
        assert details.get("subjectName") == "localhost", details
        assert details.get("protocol") in ("TLS 1.2", "TLS 1.3"), details

        # The page picked wss:// because it was loaded over https://.
        await page.wait_for_function("document.getElementById('transport').textContent === 'websocket'")
        assert await page.evaluate("() => location.protocol") == "https:"
        assert sockets == [f"wss://127.0.0.1:{port}/demo"]

        await type_and_see_echo(page, "h\u00e9llo \u00fcber TLS \u2603 \u65e5\u672c")

        # From the page's script: by IP and by name (the certificate's two
        # subjectAltNames), text and binary, and a clean close.
        for host in ("127.0.0.1", "localhost"):
            seen = await page.evaluate(ROUND_TRIP, f"wss://{host}:{port}/raw-{host}")
            assert seen == {
                "opened": True, "error": False, "code": 4000, "url": f"wss://{host}:{port}/raw-{host}",
                "text": NON_ASCII, "bytes": [0, 128, 255],
            }, seen  # fmt: skip

        # The same browser opens wss:// from a plain-HTTP page too: the
        # control for the test without the CA below.
        async with serving(EchoHandler) as (_, http_url):
            await open_http_demo(page, http_url)
            seen = await page.evaluate(ROUND_TRIP, f"wss://127.0.0.1:{port}/from-http")
            assert seen["opened"] and seen["code"] == 4000 and seen["text"] == NON_ASCII, seen
        assert errors == []

    for path in ('"GET /" 200', '"GET /demo" 101', '"GET /raw-127.0.0.1" 101', '"GET /raw-localhost" 101',
                 '"GET /from-http" 101'):  # fmt: skip
        await eventually(lambda path=path: path in wss_server.output, what=f"{path} in the access log")


async def test_chromium_without_the_test_ca_cannot_open_wss(
    pki: dict[str, Path], wss_server: ServerProcess, tmp_path: Path
) -> None:
    port = wss_server.port
    async with chromium(nss_home(tmp_path, None)) as page:
        messages: list[str] = []
        page.on("console", lambda msg: messages.append(msg.text))

        async with serving(EchoHandler) as (_, http_url):
            await open_http_demo(page, http_url)
            seen = await page.evaluate(ROUND_TRIP, f"wss://127.0.0.1:{port}/untrusted")
        assert seen == {"opened": False, "error": True, "code": 1006, "url": f"wss://127.0.0.1:{port}/untrusted"}
        assert any("ERR_CERT_AUTHORITY_INVALID" in m for m in messages), messages

        # Nor can it load the page over https:// (last: the failed navigation
        # leaves the tab on Chromium's error page).
        with pytest.raises(Exception, match="ERR_CERT_AUTHORITY_INVALID"):
            await page.goto(f"https://127.0.0.1:{port}/")

    # The TLS handshake failed, so no request reached the server, which is
    # still serving.
    assert '"GET /untrusted"' not in wss_server.output
    assert wss_server.proc is not None and wss_server.proc.poll() is None, wss_server.output
