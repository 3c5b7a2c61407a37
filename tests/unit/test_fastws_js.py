"""fastws.js, the browser client of the HTTP fallback, run in node.

The client's logic (URL resolution, the message codec and base64, transport
selection, SSE -> polling in one session, sequence numbers and dedupe, acks,
batched and resent uploads, the 404/403/421 answers, close) runs against
fakes of ``fetch``, ``EventSource`` and ``WebSocket`` that follow
docs/fallback.md: no browser and no server needed. Each case of the harness
below runs in its own ``node`` process.

Needs node >= 18 (``apt-get install -y nodejs``: Debian 12 has 18.19). Skipped without it, except
in CI (``CI=true``), where a missing node is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import ROOT, unit

SCRIPT = Path(ROOT) / "fastws" / "faces" / "fallback" / "fastws.js"
NODE = shutil.which("node") or shutil.which("nodejs")
MIN_NODE = 18  # Blob, btoa, EventTarget, MessageEvent and DOMException as globals

pytestmark = pytest.mark.timeout(120)

CASES = [
    "urls", "base64", "codec", "api",
    "websocket", "websocket_lost_comes_back", "websocket_timeout_then_sse",
    "sse_buffered_then_polling", "polling_only", "dedupe_and_resume", "batching_and_resend",
    "acks", "sse_stalls_later_then_polling", "session_gone_reconnects", "sse_session_gone_found_by_ack",
    "no_reconnect_option", "misdirected", "forbidden", "refused_at_open", "server_closes",
    "client_close_flushes_first", "close_while_connecting", "too_big", "blobs_in_order",
    "network_errors_are_retried",
]  # fmt: skip


def _node_major() -> int:
    assert NODE is not None
    out = subprocess.run([NODE, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    return int(out.strip().lstrip("v").split(".")[0])


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the client (as ``fastws.mjs``: node reads a ``.js``
    outside a ``"type": "module"`` package as CommonJS) and the harness."""
    problem = None
    if NODE is None:
        problem = "node is not installed (apt-get install -y nodejs)"
    elif _node_major() < MIN_NODE:
        problem = f"node >= {MIN_NODE} is needed, this is {_node_major()}"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem + "; CI must install it (.ci/run)")
        pytest.skip(problem)
    folder = tmp_path_factory.mktemp("fastws_js")
    shutil.copyfile(SCRIPT, folder / "fastws.mjs")
    (folder / "harness.mjs").write_text(HARNESS, encoding="utf-8")
    return folder


def run(harness: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, "harness.mjs", *args], check=False, cwd=harness, capture_output=True, text=True, timeout=unit(60), env={**os.environ}
    )


def test_the_cases_here_are_the_harness_cases(harness: Path) -> None:
    listed = run(harness)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == CASES


@pytest.mark.parametrize("case", CASES)
def test_fastws_js(harness: Path, case: str) -> None:
    result = run(harness, case)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), f"{case}:\n{result.stdout}\n{result.stderr}"


def test_the_script_is_an_es_module_that_also_sets_a_global(harness: Path) -> None:
    """``import { FastWS } from "/fastws.js"`` works, and importing it sets
    ``globalThis.FastWS`` for classic code."""
    assert NODE is not None
    code = (
        'const m = await import("./fastws.mjs");'
        'if (typeof m.FastWS !== "function" || globalThis.FastWS !== m.FastWS) throw new Error("exports");'
        'console.log(Object.keys(m).sort().join(","));'
    )
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", code], check=False, cwd=harness, capture_output=True, text=True, timeout=unit(60)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["FastWS,_internal"]


# The harness: fakes of a fallback server (an echo handler behind it), of
# EventSource and of WebSocket, and the cases. Kept in this file so the test
# is one file; it is plain node (no packages).
HARNESS = r"""
// Runs one case of fastws.js's logic in node, against fakes of fetch,
// EventSource and WebSocket that follow docs/fallback.md. Usage:
// node harness.mjs CASE  (exit 0 and "ok" on success).
import assert from "node:assert/strict";
import { FastWS, _internal } from "./fastws.mjs";

const { resolveUrl, encodeMessage, decodeMessage, toBase64, fromBase64 } = _internal;
const BASE = "http://server.test";
// FASTWS_TEST_TIMEOUT_SCALE (tests/conftest.py) stretches the waits on a slow machine.
const SCALE = Number(process.env.FASTWS_TEST_TIMEOUT_SCALE || 1);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(what, cond, ms = 3000) {
  const end = Date.now() + ms * SCALE;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
const text = (data) => (typeof data === "string" ? data : `bytes:${Array.from(new Uint8Array(data)).join(",")}`);

/** Every event of a FastWS, in order. */
function record(ws) {
  const log = [];
  ws.onopen = () => log.push(["open", ws.transport]);
  ws.onmessage = (e) => log.push(["message", text(e.data)]);
  ws.onerror = () => log.push(["error"]);
  ws.onclose = (e) => log.push(["close", e.code, e.reason, e.wasClean]);
  Object.defineProperty(log, "of", { value: (type) => log.filter((e) => e[0] === type) });
  return log;
}

// -- the fake server: sessions, an echo handler, SSE streams, long polls ------

class Server {
  constructor(options = {}) {
    this.options = { sseReady: true, maxBody: 2 ** 20, welcome: null, ...options };
    this.sessions = new Map();
    this.requests = []; // [name, query, body]
    this.times = []; // when each request came
    this.handled = []; // what the handler got: [seq, kind, data] or ["close", code, reason]
    this.hook = null; // (name, query, body, session) => undefined | {status, json} | "lose-answer" | "fail"
    this.count = 0;
  }

  record(name, query, body) {
    this.requests.push([name, query, body]);
    this.times.push(Date.now());
  }

  push(session, kind, data) {
    session.outbox.push([session.nextSeq++, kind, data]);
    this.wake(session);
  }

  closeSession(session, code, reason) {
    session.closed = { code, reason };
    this.wake(session);
  }

  wake(session) {
    const es = session.stream;
    if (es && es.live) this.feed(session, es);
    session.waiter?.();
  }

  feed(session, es) {
    for (const [seq, kind, data] of session.outbox) {
      if (seq > es.sent) {
        es.sent = seq;
        es.emit("message", JSON.stringify([kind, data]), String(seq));
      }
    }
    if (session.closed) es.emit("close", JSON.stringify(session.closed));
  }

  ack(session, n) {
    session.outbox = session.outbox.filter(([seq]) => seq > n);
  }

  async fetch(url, init = {}) {
    const u = new URL(url);
    assert.equal(u.origin, BASE);
    const name = u.pathname.replace("/_fastws/", "");
    const query = Object.fromEntries(u.searchParams);
    const body = init.body === undefined ? undefined : JSON.parse(init.body);
    assert.equal(init.method ?? "GET", body === undefined ? "GET" : "POST");
    this.record(name, query, body);
    const session = this.sessions.get(query.s);
    const verdict = this.hook?.(name, query, body, session);
    if (verdict === "fail") throw new TypeError("fetch failed");
    if (verdict && verdict !== "lose-answer") return reply(verdict.status, verdict.json);
    const answer = await this.answer(name, query, body, session, init.signal);
    if (verdict === "lose-answer") throw new TypeError("fetch failed (answer lost)");
    return answer;
  }

  async answer(name, query, body, session, signal) {
    if (name === "open") {
      const id = `s${++this.count}`;
      const s = { id, token: `t${id}`, outbox: [], nextSeq: 1, received: 0, closed: null, stream: null, waiter: null, path: body.path, transport: body.transport };
      this.sessions.set(id, s);
      if (this.options.welcome) this.push(s, "t", this.options.welcome);
      return reply(200, { session: id, token: s.token, timeout: 10.0, max_body: this.options.maxBody, heartbeat: 15.0 });
    }
    if (!session) return reply(404, { error: "unknown session" });
    if (query.t !== session.token) return reply(403, { error: "wrong token" });
    if (name === "send") {
      if (JSON.stringify(body).length > this.options.maxBody) return reply(413, { error: "too big" });
      if (typeof body.ack === "number") this.ack(session, body.ack);
      let seq = body.seq - 1;
      for (const [kind, data] of body.messages) {
        seq += 1;
        if (seq <= session.received) continue;
        this.handled.push([seq, kind, data]);
        session.received = seq;
        this.push(session, kind, data); // the echo handler
      }
      return reply(200, { received: session.received });
    }
    if (name === "close") {
      this.handled.push(["close", body.code, body.reason]);
      this.closeSession(session, body.code, body.reason);
      return reply(200, {});
    }
    if (name === "poll") {
      const last = Number(query.last);
      this.ack(session, last);
      const deadline = Date.now() + 300; // the real server waits 25 s
      while (!session.closed && !session.outbox.some(([seq]) => seq > last) && Date.now() < deadline) {
        if (signal?.aborted) throw signal.reason;
        await new Promise((r) => {
          session.waiter = r;
          setTimeout(r, 20);
        });
      }
      const messages = session.outbox.filter(([seq]) => seq > last);
      return reply(200, { messages, close: messages.length ? null : session.closed });
    }
    throw new Error(`unexpected request ${name}`);
  }
}

function reply(status, json) {
  return { status, text: async () => JSON.stringify(json) };
}

let server;

class FakeEventSource extends EventTarget {
  constructor(url) {
    super();
    const u = new URL(url);
    assert.equal(u.pathname, "/_fastws/sse");
    this.url = url;
    this.query = Object.fromEntries(u.searchParams);
    this.live = false;
    this.closed = false;
    server.record("sse", this.query, undefined);
    const session = server.sessions.get(this.query.s);
    this.sent = Number(this.query.last ?? 0);
    setTimeout(() => {
      if (this.closed) return;
      if (!session || session.token !== this.query.t) return this.emit("error");
      if (server.options.replayFrom !== undefined) this.sent = server.options.replayFrom; // a server that resends too much
      session.stream = this;
      if (!server.options.sseReady) return; // a buffering proxy: nothing gets through
      this.live = true;
      this.emit("ready", "");
      server.feed(session, this);
    }, 1);
  }
  emit(type, data, lastEventId) {
    if (this.closed) return;
    if (type === "message" || type === "ready" || type === "close" || type === "recycle") {
      this.dispatchEvent(new MessageEvent(type, { data, lastEventId: lastEventId ?? this.lastEventId ?? "" }));
      if (lastEventId !== undefined) this.lastEventId = lastEventId;
    } else {
      this.dispatchEvent(new Event(type));
    }
  }
  close() {
    this.closed = true;
    this.live = false;
  }
}

class FakeWebSocket extends EventTarget {
  static mode = "echo"; // "echo", "never" (a proxy that holds the upgrade), "refuse"
  static made = [];
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    this.bufferedAmount = 0;
    FakeWebSocket.made.push(this);
    const mode = FakeWebSocket.mode;
    if (mode === "refuse") setTimeout(() => this.#end(1006, "", false, true), 1);
    if (mode === "echo") setTimeout(() => { if (this.readyState === 0) { this.readyState = 1; this.onopen?.(new Event("open")); } }, 1);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("fake: send when not open");
    setTimeout(() => this.onmessage?.(new MessageEvent("message", { data: typeof data === "string" ? data : new Uint8Array(data).buffer })), 1);
  }
  close(code = 1005, reason = "") {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    setTimeout(() => this.#end(code, reason, true, false), 1);
  }
  #end(code, reason, wasClean, error) {
    this.readyState = 3;
    if (error) this.onerror?.(new Event("error"));
    const event = new Event("close");
    Object.assign(event, { code, reason, wasClean });
    this.onclose?.(event);
  }
}

function install(options = {}) {
  server = new Server(options);
  globalThis.fetch = (url, init) => server.fetch(url, init);
  globalThis.EventSource = FakeEventSource;
  globalThis.WebSocket = FakeWebSocket;
  FakeWebSocket.mode = options.ws ?? "never";
  FakeWebSocket.made = [];
  return server;
}

const names = (kind) => server.requests.filter((r) => r[0] === kind);
const QUICK = { openTimeout: 50, sseReadyTimeout: 100 };

// -- the cases ------------------------------------------------------------------

const cases = {
  async urls() {
    assert.deepEqual(resolveUrl("/chat?room=1#x", "http://h.test:8080/page"), { url: "ws://h.test:8080/chat?room=1", origin: "http://h.test:8080", path: "/chat?room=1" });
    assert.deepEqual(resolveUrl("/chat", "https://h.test/"), { url: "wss://h.test/chat", origin: "https://h.test", path: "/chat" });
    assert.deepEqual(resolveUrl("chat", "https://h.test/app/"), { url: "wss://h.test/app/chat", origin: "https://h.test", path: "/app/chat" });
    assert.deepEqual(resolveUrl("ws://h.test:80/a", "https://other.test/"), { url: "ws://h.test/a", origin: "http://h.test", path: "/a" });
    assert.deepEqual(resolveUrl("wss://h.test:444", undefined), { url: "wss://h.test:444/", origin: "https://h.test:444", path: "/" });
    assert.deepEqual(resolveUrl("http://h.test/x?y", undefined), { url: "ws://h.test/x?y", origin: "http://h.test", path: "/x?y" });
    assert.equal(resolveUrl("https://h.test:443/x", undefined).url, "wss://h.test/x");
    for (const [bad, base] of [["ftp://h.test/", undefined], ["/relative", undefined], ["http://", undefined]]) {
      assert.throws(() => resolveUrl(bad, base), (e) => e instanceof DOMException && e.name === "SyntaxError", bad);
    }
    assert.throws(() => new FastWS("/chat"), (e) => e.name === "SyntaxError"); // no page here to resolve against
  },

  async base64() {
    for (const n of [0, 1, 2, 3, 4, 255, 0x8000 - 1, 0x8000, 0x8000 + 1, 200000]) {
      const bytes = new Uint8Array(n).map((_, i) => (i * 7919 + n) & 255);
      const b64 = toBase64(bytes);
      assert.equal(b64, Buffer.from(bytes).toString("base64"), `length ${n}`);
      assert.deepEqual(fromBase64(b64), bytes);
    }
    assert.throws(() => fromBase64("not base64!"));
  },

  async codec() {
    assert.deepEqual(encodeMessage("h\u00e9llo \u2603 \u{1F600}"), ["t", "h\u00e9llo \u2603 \u{1F600}"]);
    assert.deepEqual(encodeMessage("a\ud800b\udc00c\ud83d\ude00"), ["t", "a\ufffdb\ufffdc\u{1F600}"]); // as WebSocket
    assert.deepEqual(encodeMessage(""), ["t", ""]);
    assert.deepEqual(encodeMessage(new Uint8Array([0, 1, 255]).buffer), ["b", "AAH/"]);
    const big = new Uint8Array([9, 9, 0, 1, 255, 9]);
    assert.deepEqual(encodeMessage(big.subarray(2, 5)), ["b", "AAH/"]); // a view: its bytes only
    assert.deepEqual(encodeMessage(new DataView(big.buffer, 2, 3)), ["b", "AAH/"]);
    assert.deepEqual(encodeMessage(new Uint16Array([0x0201])), ["b", "AQI="]);
    assert.deepEqual(encodeMessage(new ArrayBuffer(0)), ["b", ""]);
    assert.deepEqual(await encodeMessage(new Blob([new Uint8Array([0, 1, 255])])), ["b", "AAH/"]);
    assert.deepEqual(encodeMessage(42), ["t", "42"]);
    // Encoded at send(): a later change to the buffer changes nothing.
    const buffer = new Uint8Array([1, 2, 3]);
    const sent = encodeMessage(buffer);
    buffer[0] = 99;
    assert.deepEqual(sent, ["b", "AQID"]);

    assert.equal(decodeMessage("t", "hi"), "hi");
    const ab = decodeMessage("b", "AAH/");
    assert.ok(ab instanceof ArrayBuffer);
    assert.deepEqual(Array.from(new Uint8Array(ab)), [0, 1, 255]);
    const blob = decodeMessage("b", "AAH/", "blob");
    assert.ok(blob instanceof Blob);
    assert.deepEqual(Array.from(new Uint8Array(await blob.arrayBuffer())), [0, 1, 255]);
    for (const [kind, payload] of [["x", "y"], ["t", 1], [undefined, undefined], ["b", "!!"]]) {
      assert.throws(() => decodeMessage(kind, payload));
    }
  },

  async api() {
    install();
    assert.equal(FastWS.CONNECTING, 0);
    assert.equal(FastWS.CLOSED, 3);
    assert.throws(() => new FastWS(`${BASE}/x`, { transports: ["carrier-pigeon"] }), TypeError);
    assert.throws(() => new FastWS(`${BASE}/x`, { transports: [] }), TypeError);
    const ws = new FastWS(`${BASE}/x`, { ...QUICK, transports: ["sse"] });
    assert.equal(ws.OPEN, 1);
    assert.equal(ws.url, "ws://server.test/x");
    assert.equal(ws.readyState, FastWS.CONNECTING);
    assert.equal(ws.transport, null);
    assert.equal(ws.binaryType, "arraybuffer");
    ws.binaryType = "nonsense";
    assert.equal(ws.binaryType, "arraybuffer");
    ws.binaryType = "blob";
    assert.equal(ws.binaryType, "blob");
    assert.throws(() => ws.send("too early"), (e) => e.name === "InvalidStateError");
    assert.throws(() => ws.close(999), (e) => e.name === "InvalidAccessError");
    assert.throws(() => ws.close(1000, "x".repeat(124)), (e) => e.name === "SyntaxError");
    const handler = () => {};
    ws.onopen = handler;
    assert.equal(ws.onopen, handler);
    ws.onopen = null;
    assert.equal(ws.onopen, null);
    let viaListener = 0;
    ws.addEventListener("open", () => viaListener++);
    await waitFor("open", () => ws.readyState === FastWS.OPEN);
    assert.equal(viaListener, 1);
    ws.close();
    await waitFor("closed", () => ws.readyState === FastWS.CLOSED);
  },

  async websocket() {
    install({ ws: "echo" });
    const ws = new FastWS(`${BASE}/chat`, QUICK);
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    assert.equal(ws.transport, "websocket");
    ws.send("hello");
    ws.send(new Uint8Array([1, 2]));
    await waitFor("echoes", () => log.of("message").length === 2);
    ws.close(4000, "bye");
    await waitFor("close", () => log.of("close").length);
    assert.deepEqual(log, [["open", "websocket"], ["message", "hello"], ["message", "bytes:1,2"], ["close", 4000, "bye", true]]);
    assert.equal(ws.readyState, FastWS.CLOSED);
    assert.equal(ws.transport, null);
    assert.equal(names("open").length, 0); // no HTTP session was needed
    ws.send("after close is dropped, as WebSocket does");
  },

  async websocket_lost_comes_back() {
    install({ ws: "echo" });
    const ws = new FastWS(`${BASE}/chat`, QUICK);
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    const [first] = FakeWebSocket.made;
    first.readyState = 3;
    first.onerror(new Event("error"));
    first.onclose(Object.assign(new Event("close"), { code: 1006, reason: "", wasClean: false }));
    assert.equal(ws.readyState, FastWS.CONNECTING);
    await waitFor("second open", () => log.of("open").length === 2);
    assert.deepEqual(log, [["open", "websocket"], ["error"], ["close", 1006, "", false], ["open", "websocket"]]);
    assert.equal(FakeWebSocket.made.length, 2);
    ws.close();
  },

  async websocket_timeout_then_sse() {
    install({ ws: "never" });
    const ws = new FastWS(`${BASE}/chat?x=1`, QUICK);
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    assert.equal(ws.transport, "sse");
    assert.equal(FakeWebSocket.made.length, 1);
    assert.ok(FakeWebSocket.made[0].readyState >= 2); // given up after openTimeout
    assert.deepEqual(names("open").map((r) => r[2]), [{ path: "/chat?x=1", transport: "sse" }]);
    ws.send("one");
    ws.send(new Uint8Array([0, 1, 255]));
    await waitFor("echoes", () => log.of("message").length === 2);
    assert.deepEqual(log.of("message"), [["message", "one"], ["message", "bytes:0,1,255"]]);
    // Both left in one POST (same task), numbered from 1.
    assert.deepEqual(names("send")[0][2], { seq: 1, messages: [["t", "one"], ["b", "AAH/"]], ack: 0 });
    assert.deepEqual(server.handled, [[1, "t", "one"], [2, "b", "AAH/"]]);
    ws.close();
  },

  async sse_buffered_then_polling() {
    install({ sseReady: false, welcome: "welcome" });
    const ws = new FastWS(`${BASE}/chat`, { ...QUICK, transports: ["sse", "polling"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    assert.equal(ws.transport, "polling");
    assert.equal(names("open").length, 1); // the same session
    assert.equal(names("open")[0][2].transport, "sse");
    await waitFor("welcome", () => log.of("message").length === 1);
    for (let i = 0; i < 5; i++) ws.send(`m${i}`);
    await waitFor("echoes", () => log.of("message").length === 6);
    await sleep(100);
    assert.deepEqual(log.of("message").map((m) => m[1]), ["welcome", "m0", "m1", "m2", "m3", "m4"]);
    assert.ok(names("poll").length >= 2);
    ws.close(1000, "done");
    await waitFor("close", () => log.of("close").length);
    assert.deepEqual(log.at(-1), ["close", 1000, "done", true]);
    assert.deepEqual(server.handled.at(-1), ["close", 1000, "done"]);
  },

  async polling_only() {
    install({ welcome: "hi" });
    const ws = new FastWS(`${BASE}/p`, { ...QUICK, transports: ["polling"] });
    const log = record(ws);
    await waitFor("welcome", () => log.of("message").length === 1);
    assert.deepEqual(names("open")[0][2], { path: "/p", transport: "polling" });
    assert.equal(names("sse").length, 0);
    assert.equal(FakeWebSocket.made.length, 0);
    assert.equal(log[0][1], "polling");
    ws.close();
  },

  async dedupe_and_resume() {
    // A server that sends everything again on each new stream: each message
    // must still arrive once, and reopened streams carry last=N.
    install({ replayFrom: 0 });
    const ws = new FastWS(`${BASE}/d`, { ...QUICK, transports: ["sse"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    const session = [...server.sessions.values()][0];
    server.push(session, "t", "a");
    server.push(session, "t", "b");
    await waitFor("a, b", () => log.of("message").length === 2);
    session.stream.emit("recycle", ""); // the server ends the stream: reopened at once
    await waitFor("second stream", () => names("sse").length === 2);
    assert.equal(names("sse")[1][1].last, "2");
    server.push(session, "t", "c");
    await waitFor("c", () => log.of("message").length === 3);
    session.stream.emit("error"); // broken: reopened after a backoff and an ack POST
    await waitFor("third stream", () => names("sse").length === 3, 2000);
    assert.equal(names("sse")[2][1].last, "3");
    assert.ok(names("send").some((r) => r[2].messages.length === 0 && r[2].ack === 3));
    server.push(session, "t", "d");
    await waitFor("d", () => log.of("message").length === 4);
    await sleep(50);
    assert.deepEqual(log.of("message").map((m) => m[1]), ["a", "b", "c", "d"]);
    assert.equal(ws.transport, "sse");
    ws.close();
  },

  async batching_and_resend() {
    install();
    const ws = new FastWS(`${BASE}/b`, { ...QUICK, transports: ["polling"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    let sends = 0;
    let release;
    const held = new Promise((r) => (release = r));
    const original = server.answer.bind(server);
    server.answer = async (name, ...rest) => {
      if (name === "send" && ++sends === 1) await held; // the first POST takes its time
      return original(name, ...rest);
    };
    ws.send("first");
    await waitFor("first POST", () => names("send").length === 1);
    for (let i = 0; i < 5; i++) ws.send(`q${i}`);
    assert.ok(ws.bufferedAmount > 0);
    await sleep(30);
    assert.equal(names("send").length, 1); // one POST at a time
    // The next POST's answer gets lost after the server took the messages.
    let lost = false;
    server.hook = (name) => (name === "send" && !lost ? ((lost = true), "lose-answer") : undefined);
    release();
    await waitFor("all echoed", () => log.of("message").length === 6);
    await waitFor("queue empty", () => ws.bufferedAmount === 0);
    const bodies = names("send").map((r) => r[2]).filter((b) => b.messages.length);
    assert.deepEqual(bodies[0], { seq: 1, messages: [["t", "first"]], ack: 0 });
    assert.deepEqual(bodies[1].seq, 2);
    assert.deepEqual(bodies[1].messages.map((m) => m[1]), ["q0", "q1", "q2", "q3", "q4"]); // batched
    assert.deepEqual(bodies[2], bodies[1].ack === bodies[2].ack ? bodies[1] : { ...bodies[1], ack: bodies[2].ack }); // sent again
    assert.deepEqual(server.handled.map((h) => h[2]), ["first", "q0", "q1", "q2", "q3", "q4"]); // each once
    assert.deepEqual(log.of("message").map((m) => m[1]), ["first", "q0", "q1", "q2", "q3", "q4"]);
    ws.close();
  },

  async acks() {
    install();
    const ws = new FastWS(`${BASE}/a`, { ...QUICK, transports: ["sse"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    const session = [...server.sessions.values()][0];
    for (let i = 1; i <= 150; i++) server.push(session, "t", `n${i}`);
    await waitFor("150 messages", () => log.of("message").length === 150);
    await waitFor("acks", () => names("send").some((r) => r[2].ack === 150), 1000);
    const acks = names("send").map((r) => r[2]);
    assert.ok(acks.every((b) => b.messages.length === 0));
    assert.ok(acks[0].ack >= 100 && acks[0].ack <= 150, JSON.stringify(acks));
    assert.ok(acks.length <= 3, JSON.stringify(acks));
    assert.equal(session.outbox.length, 0); // the server could forget them
    await sleep(400);
    assert.equal(names("send").length, acks.length); // nothing more to acknowledge
    // A few messages: acknowledged after ACK_AFTER (250 ms), in one POST.
    let firstLate = 0;
    ws.addEventListener("message", () => (firstLate ||= Date.now()));
    for (let i = 1; i <= 3; i++) server.push(session, "t", `late${i}`);
    await waitFor("153 messages", () => log.of("message").length === 153);
    await waitFor("timer ack", () => names("send").some((r) => r[2].ack === 153), 1500);
    const ackedAt = server.times[server.requests.findIndex((r) => r[0] === "send" && r[2].ack === 153)];
    assert.ok(ackedAt - firstLate >= 200, `acknowledged after ${ackedAt - firstLate} ms: no timer`);
    assert.equal(names("send").length, acks.length + 1);
    ws.close();
  },

  async sse_stalls_later_then_polling() {
    install();
    const ws = new FastWS(`${BASE}/s`, { ...QUICK, transports: ["sse", "polling"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    const [session] = server.sessions.values();
    server.push(session, "t", "1");
    await waitFor("1", () => log.of("message").length === 1);
    server.options.sseReady = false; // a proxy starts buffering
    session.stream.emit("recycle", "");
    await waitFor("polling", () => ws.transport === "polling", 2000);
    server.push(session, "t", "2");
    await waitFor("2", () => log.of("message").length === 2);
    assert.deepEqual(log.map((e) => e.slice(0, 2)), [["open", "sse"], ["message", "1"], ["message", "2"]]); // no new open
    assert.equal(names("open").length, 1);
    ws.close();
  },

  async session_gone_reconnects() {
    install();
    const ws = new FastWS(`${BASE}/g`, { ...QUICK, transports: ["polling"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    server.sessions.clear(); // expired, or the server restarted
    await waitFor("close", () => log.of("close").length);
    assert.deepEqual(log.of("close")[0].slice(1, 2), [1006]);
    assert.equal(log.of("error").length, 0);
    await waitFor("open again", () => log.of("open").length === 2);
    assert.equal(names("open").length, 2);
    assert.equal(ws.readyState, FastWS.OPEN);
    ws.send("again");
    await waitFor("echo", () => log.of("message").length === 1);
    ws.close();
  },

  async sse_session_gone_found_by_ack() {
    install();
    const ws = new FastWS(`${BASE}/g`, { ...QUICK, transports: ["sse", "polling"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    const [session] = server.sessions.values();
    server.sessions.clear();
    session.stream.emit("error"); // EventSource does not say it was a 404
    await waitFor("close", () => log.of("close").length);
    assert.equal(log.of("close")[0][1], 1006);
    assert.ok(names("send").length >= 1);
    await waitFor("open again", () => log.of("open").length === 2);
    assert.equal(ws.transport, "sse");
    ws.close();
  },

  async no_reconnect_option() {
    install();
    const ws = new FastWS(`${BASE}/g`, { ...QUICK, transports: ["polling"], reconnect: false });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    server.sessions.clear();
    await waitFor("close", () => log.of("close").length);
    await sleep(300);
    assert.equal(names("open").length, 1);
    assert.equal(ws.readyState, FastWS.CLOSED);
  },

  async misdirected() {
    install();
    const warnings = [];
    console.warn = (...args) => warnings.push(args.join(" "));
    const ws = new FastWS(`${BASE}/m`, { ...QUICK, transports: ["polling"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    const misdirected = { status: 421, json: { error: "another process" } };
    // The first 421 may be a restarted server: start over once ...
    server.hook = (name, query) => (name === "poll" && query.s === "s1" ? misdirected : undefined);
    await waitFor("second open", () => log.of("open").length === 2, 2000);
    await sleep(100);
    assert.equal(warnings.length, 0);
    assert.equal(ws.readyState, FastWS.OPEN);
    // ... a second one soon after is misrouting (no sticky sessions): stop, and say why.
    server.hook = (name) => (name === "poll" ? misdirected : undefined);
    await waitFor("final close", () => log.of("close").length === 2, 2000);
    const events = log.map((e) => e.slice(0, 2));
    assert.deepEqual(events, [["open", "polling"], ["close", 1006], ["open", "polling"], ["error"], ["close", 1006]]);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /sticky/);
    await sleep(300);
    assert.equal(names("open").length, 2);
    assert.equal(ws.readyState, FastWS.CLOSED);
  },

  async forbidden() {
    install();
    const ws = new FastWS(`${BASE}/f`, { ...QUICK, transports: ["polling"], reconnect: false });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    server.hook = (name) => (name === "poll" ? { status: 403, json: { error: "wrong token" } } : undefined);
    await waitFor("close", () => log.of("close").length, 2000);
    assert.deepEqual(log.slice(1).map((e) => e.slice(0, 2)), [["error"], ["close", 1008]]);
  },

  async refused_at_open() {
    install({ ws: "refuse" });
    server.hook = (name) => (name === "open" ? { status: 403, json: null } : undefined);
    const ws = new FastWS(`${BASE}/r`, QUICK);
    const log = record(ws);
    await waitFor("close", () => log.of("close").length);
    assert.deepEqual(log, [["error"], ["close", 1006, "", false]]);
    await sleep(200);
    assert.equal(names("open").length, 1); // never open: no retry
    assert.equal(ws.readyState, FastWS.CLOSED);
  },

  async server_closes() {
    install();
    const ws = new FastWS(`${BASE}/c`, { ...QUICK, transports: ["sse"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    const [session] = server.sessions.values();
    server.push(session, "t", "last words");
    server.closeSession(session, 4000, "bye");
    await waitFor("close", () => log.of("close").length);
    assert.deepEqual(log, [["open", "sse"], ["message", "last words"], ["close", 4000, "bye", true]]);
    await sleep(300);
    assert.equal(names("open").length, 1); // a close with a code is final
  },

  async client_close_flushes_first() {
    install();
    const ws = new FastWS(`${BASE}/c`, { ...QUICK, transports: ["sse"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    ws.send("before close");
    ws.close(4001, "done");
    assert.equal(ws.readyState, FastWS.CLOSING);
    ws.send("dropped");
    await waitFor("close", () => log.of("close").length);
    assert.deepEqual(server.handled, [[1, "t", "before close"], ["close", 4001, "done"]]);
    const order = server.requests.map((r) => r[0]).filter((n) => n === "send" || n === "close");
    assert.deepEqual(order, ["send", "close"]);
    assert.deepEqual(log.at(-1), ["close", 4001, "done", true]);
  },

  async close_while_connecting() {
    install({ ws: "never" });
    const ws = new FastWS(`${BASE}/c`, QUICK);
    const log = record(ws);
    ws.close();
    assert.equal(ws.readyState, FastWS.CLOSED);
    await sleep(300);
    assert.deepEqual(log, [["error"], ["close", 1006, "", false]]);
    assert.equal(names("open").length, 0);
  },

  async too_big() {
    install({ maxBody: 300 });
    const ws = new FastWS(`${BASE}/big`, { ...QUICK, transports: ["polling"], reconnect: false });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    ws.send("x".repeat(100));
    ws.send("y".repeat(100));
    ws.send("z".repeat(100)); // the first two fit in one body, this one in the next
    await waitFor("3 echoes", () => log.of("message").length === 3);
    assert.deepEqual(names("send").filter((r) => r[2].messages.length).map((r) => r[2].messages.length), [2, 1]);
    ws.send("w".repeat(400)); // fits in no body
    await waitFor("close", () => log.of("close").length);
    assert.deepEqual(log.slice(-2).map((e) => e.slice(0, 2)), [["error"], ["close", 1009]]);
    await waitFor("the server told", () => server.handled.some((h) => h[0] === "close" && h[1] === 1009));
  },

  async blobs_in_order() {
    install();
    const ws = new FastWS(`${BASE}/blob`, { ...QUICK, transports: ["polling"], binaryType: "blob" });
    const got = [];
    ws.onmessage = async (e) => got.push(e.data);
    await waitFor("open", () => ws.readyState === FastWS.OPEN);
    ws.send(new Blob([new Uint8Array([7, 8])]));
    ws.send("after the blob");
    await waitFor("echoes", () => got.length === 2);
    assert.ok(got[0] instanceof Blob);
    assert.deepEqual(Array.from(new Uint8Array(await got[0].arrayBuffer())), [7, 8]);
    assert.equal(got[1], "after the blob");
    assert.deepEqual(server.handled.map((h) => h[1]), ["b", "t"]);
    ws.close();
  },

  async network_errors_are_retried() {
    install();
    const ws = new FastWS(`${BASE}/n`, { ...QUICK, transports: ["polling"] });
    const log = record(ws);
    await waitFor("open", () => log.of("open").length);
    let failures = 0;
    server.hook = (name) => ((name === "send" || name === "poll") && failures++ < 4 ? "fail" : undefined);
    ws.send("through");
    await waitFor("echo", () => log.of("message").length === 1, 3000);
    assert.ok(failures >= 4);
    assert.equal(log.of("close").length, 0);
    ws.close();
  },
};

const name = process.argv[2];
if (!cases[name]) {
  console.log(Object.keys(cases).join("\n"));
  process.exit(name ? 2 : 0);
}
try {
  await cases[name]();
  console.log("ok");
  process.exit(0);
} catch (error) {
  console.error(error);
  process.exit(1);
}
"""
