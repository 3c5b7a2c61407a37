// fastws.js: the browser client of fastws (wire format: docs/fallback.md).
//
// A WebSocket-like object that connects over WebSocket when it can, and over
// the server's HTTP fallback when it cannot: Server-Sent Events down and POST
// up, or long polling when a proxy buffers the SSE stream.
//
//   <script type="module">
//     import { FastWS } from "/fastws.js";
//     const ws = new FastWS("/chat", { transports: ["websocket", "sse", "polling"] });
//     ws.onopen = () => ws.send("hello");
//     ws.onmessage = (event) => console.log(ws.transport, event.data);
//   </script>
//
// This file is an ES module: no build step, no dependencies. One file cannot
// be both a module and a classic script (`export` is a syntax error in a
// classic script, and a module's exports exist only if it has one), so for
// code outside modules it also sets `globalThis.FastWS` when it runs. Load it
// with <script type="module" src="/fastws.js"></script>: module scripts are
// deferred, so classic code uses `window.FastWS` from "DOMContentLoaded" on.
//
// Differences from WebSocket, all on purpose: the connection comes back by
// itself (option `reconnect`) after it was lost (1006) or the server went
// away (1001, 1012, 1013): "close" fires, readyState goes back to CONNECTING,
// and "open" fires again on a new session (messages not yet delivered by then
// are lost, as with a new WebSocket). `transport` tells how it is connected.

const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;
const TRANSPORTS = ["websocket", "sse", "polling"];
const PREFIX = "/_fastws/";
const MAX_BACKOFF = 5000; // ms: the longest wait before trying again
const ACK_EVERY = 100; // messages received, or ...
const ACK_AFTER = 250; // ... ms: then tell the server, which trims its outbox
const POLL_WAIT = 25000; // ms the server holds a poll that has nothing to say
const STREAM_LIFE = 60000; // ms: the server recycles an SSE stream this often
const POST_TIMEOUT = 30000; // ms: a POST this slow is given up (and sent again)
// Close codes after which a connection that was open comes back by itself.
const RETRY_CODES = new Set([1001, 1006, 1012, 1013]);
const ENCODER = new TextEncoder();
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

// -- pure helpers (exported as _internal for fastws's tests) -----------------

/** `url` (ws, wss, http, https, or relative to `base`) as the WebSocket URL,
 * the HTTP origin of the fallback, and the path (with query) of the session. */
function resolveUrl(url, base) {
  let parsed;
  try {
    parsed = new URL(String(url), base);
  } catch {
    throw new DOMException(`Invalid URL: ${url}`, "SyntaxError");
  }
  const secure = { "wss:": true, "https:": true, "ws:": false, "http:": false }[parsed.protocol];
  if (secure === undefined) throw new DOMException(`The URL's scheme must be ws, wss, http or https: ${url}`, "SyntaxError");
  const path = parsed.pathname + parsed.search; // a fragment means nothing to a server
  return {
    url: `${secure ? "wss" : "ws"}://${parsed.host}${path}`,
    origin: `${secure ? "https" : "http"}://${parsed.host}`,
    path,
  };
}

function toBase64(bytes) {
  if (bytes.toBase64) return bytes.toBase64();
  let text = "";
  // In slices: String.fromCharCode(...a whole megabyte) overflows the stack.
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function fromBase64(text) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** What send() takes, as a message of the wire format; a Promise for a Blob.
 * Bytes are encoded at once: like WebSocket, later changes to the buffer do
 * not change what was sent. */
function encodeMessage(data) {
  // Lone surrogates become U+FFFD, as WebSocket does (the server wants UTF-8).
  if (typeof data === "string") return ["t", data.toWellFormed ? data.toWellFormed() : data.replace(LONE_SURROGATE, "\uFFFD")];
  if (data instanceof ArrayBuffer) return ["b", toBase64(new Uint8Array(data))];
  if (ArrayBuffer.isView(data)) return ["b", toBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))];
  if (typeof Blob === "function" && data instanceof Blob) return data.arrayBuffer().then(encodeMessage);
  return encodeMessage(String(data)); // WebSocket.send does the same
}

/** A received message as event.data: a string, an ArrayBuffer or a Blob. */
function decodeMessage(kind, payload, binaryType = "arraybuffer") {
  if (typeof payload !== "string" || (kind !== "t" && kind !== "b")) {
    throw new TypeError(`not a fastws message: ${JSON.stringify([kind, payload])}`);
  }
  if (kind === "t") return payload;
  const bytes = fromBase64(payload);
  return binaryType === "blob" ? new Blob([bytes]) : bytes.buffer;
}

/** Full jitter: clients that lost the server together do not return together. */
function backoff(attempt, cap = MAX_BACKOFF) {
  return Math.random() * Math.min(cap, MAX_BACKOFF, 100 * 2 ** attempt);
}

/** Resolves after `ms`, or as soon as `signal` aborts (callers check why). */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done);
  });
}

/** AbortSignal.any where it exists (not before Chrome 116, Safari 17.4). */
function anySignal(signals) {
  if (AbortSignal.any) return AbortSignal.any(signals);
  const controller = new AbortController();
  for (const signal of signals) {
    if (signal.aborted) controller.abort(signal.reason);
    else signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}

function parseJSON(text) {
  try { return JSON.parse(text); } catch { return null; }
}

// -- the client ---------------------------------------------------------------

class FastWS extends EventTarget {
  static CONNECTING = CONNECTING; static OPEN = OPEN; static CLOSING = CLOSING; static CLOSED = CLOSED;

  #url; #origin; #path; #options;
  #readyState = CONNECTING;
  #transport = null;
  #binaryType = "arraybuffer";
  // Everything of one attempt or connection (its WebSocket, or its session,
  // streams and queues) lives in a "life"; aborting its controller ends every
  // timer, request and stream of it, so nothing stale acts on a newer one.
  #life = null;
  #closing = false; // close() was called: nothing comes back by itself
  #everOpen = false;
  #retries = 0; // attempts since the last open, for the backoff
  #preferred = null; // the transport that worked last: tried first next time
  #misdirectedAt = -Infinity; // when a request last got 421

  constructor(url, options = {}) {
    super();
    ({ url: this.#url, origin: this.#origin, path: this.#path } = resolveUrl(url, globalThis.location?.href));
    const transports = options.transports ?? TRANSPORTS;
    if (!Array.isArray(transports) || !transports.length || transports.some((t) => !TRANSPORTS.includes(t))) {
      throw new TypeError(`options.transports: a non-empty list of ${TRANSPORTS.join(", ")}`);
    }
    this.#options = {
      transports: [...new Set(transports)],
      openTimeout: options.openTimeout ?? 3000,
      sseReadyTimeout: options.sseReadyTimeout ?? 3000,
      reconnect: options.reconnect ?? true,
    };
    this.binaryType = options.binaryType ?? "arraybuffer";
    this.#connect();
  }

  get url() { return this.#url; }
  get readyState() { return this.#readyState; }
  get transport() { return this.#transport; }
  get binaryType() { return this.#binaryType; }
  set binaryType(value) {
    if (value === "blob" || value === "arraybuffer") this.#binaryType = value; // else ignored, as WebSocket does
  }
  /** Bytes sent and not yet taken by the server (over HTTP: JSON bytes). */
  get bufferedAmount() {
    const life = this.#life;
    return life?.ws ? life.ws.bufferedAmount : (life?.buffered ?? 0);
  }

  send(data) {
    if (this.#readyState === CONNECTING) throw new DOMException("send() before the connection is open", "InvalidStateError");
    const life = this.#life;
    if (this.#readyState !== OPEN || !life) return; // dropped once closing, as WebSocket does
    if (life.ws) return life.ws.send(data);
    // Over HTTP a message keeps its number until the server says it has it.
    const entry = { seq: life.nextSeq++, json: "", size: 0, ready: null };
    const set = (message) => {
      entry.json = JSON.stringify(message);
      entry.size = ENCODER.encode(entry.json).length;
      entry.ready = null;
      life.buffered += entry.size;
    };
    const message = encodeMessage(data);
    if (message instanceof Promise) entry.ready = message.then(set);
    else set(message);
    life.outbox.push(entry);
    this.#pump(life);
  }

  close(code, reason = "") {
    if (code !== undefined && code !== 1000 && !(code >= 3000 && code <= 4999)) {
      throw new DOMException(`close code must be 1000 or 3000-4999, not ${code}`, "InvalidAccessError");
    }
    reason = String(reason);
    if (ENCODER.encode(reason).length > 123) throw new DOMException("close reason over 123 bytes", "SyntaxError");
    this.#closing = true; // also when called from onclose: no reconnection after it
    if (this.#readyState === CLOSING || this.#readyState === CLOSED) return;
    const life = this.#life;
    if (this.#readyState === CONNECTING) {
      // As WebSocket: closing before open fails the attempt (error, then 1006).
      if (life.id) this.#tellClose(life, code ?? 1000, reason);
      return this.#ended(life, 1006, "", false, { error: true });
    }
    this.#readyState = CLOSING;
    if (life.ws) life.ws.close(code ?? 1000, reason);
    else this.#closeSession(life, code ?? 1000, reason);
  }

  // -- connecting ---------------------------------------------------------------

  #newLife() {
    this.#life?.ctl.abort();
    return (this.#life = {
      ctl: new AbortController(),
      ws: null, // the WebSocket, once open
      id: null, token: null, // the HTTP session
      timeout: 10000, maxBody: 2 ** 20, heartbeat: 15000,
      es: null, sseFailures: 0, onPageHide: null,
      last: 0, acked: 0, ackTimer: 0, // down: the last number delivered, the last acknowledged
      nextSeq: 1, outbox: [], buffered: 0, pumping: null, forceAck: false, acking: null, // up
    });
  }

  #alive(life) {
    return this.#life === life && !life.ctl.signal.aborted;
  }

  /** Try the transports in order (after `delay`, when coming back). */
  async #connect(delay = 0) {
    const life = this.#newLife();
    if (delay) await sleep(delay, life.ctl.signal);
    const order = this.#order();
    let refused = false;
    for (const name of order) {
      if (!this.#alive(life) || this.#readyState !== CONNECTING) return;
      if (name === "websocket") {
        await this.#tryWebSocket(life);
      } else if (name === order.find((t) => t !== "websocket")) {
        // SSE and polling share one session: one step at the first of them.
        refused = (await this.#trySession(life, order)) === "refused";
        if (refused) break;
      }
    }
    if (!this.#alive(life) || this.#readyState !== CONNECTING) return;
    if (this.#everOpen && this.#options.reconnect && !refused) {
      this.#connect(backoff(this.#retries++)); // coming back: keep trying, quietly
    } else {
      this.#ended(life, 1006, "", false, { error: true });
    }
  }

  #order() {
    const list = this.#options.transports;
    const first = this.#preferred;
    return first && list.includes(first) ? [first, ...list.filter((t) => t !== first)] : list;
  }

  #tryWebSocket(life) {
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new WebSocket(this.#url);
      } catch {
        return resolve(false); // no WebSocket here, or a URL it refuses
      }
      ws.binaryType = "arraybuffer";
      const signal = life.ctl.signal;
      const giveUp = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", giveUp);
        ws.onopen = ws.onerror = ws.onclose = null;
        ws.close();
        resolve(false);
      };
      // A proxy that holds the upgrade never fails it: time counts as failure.
      const timer = setTimeout(giveUp, this.#options.openTimeout);
      signal.addEventListener("abort", giveUp);
      ws.onerror = ws.onclose = giveUp;
      ws.onopen = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", giveUp);
        life.ws = ws;
        ws.onmessage = (event) => {
          const data = event.data;
          this.#fire("message", { data: typeof data !== "string" && this.#binaryType === "blob" ? new Blob([data]) : data });
        };
        ws.onerror = () => this.#fire("error");
        ws.onclose = (event) => this.#ended(life, event.code, event.reason, event.wasClean, { retry: RETRY_CODES.has(event.code) });
        this.#opened(life, "websocket");
        resolve(true);
      };
    });
  }

  /** Open a session, then SSE (falling back to polling) or polling. */
  async #trySession(life, order) {
    const http = order.filter((t) => t !== "websocket");
    const answer = await this.#request(life, "open", { path: this.#path, transport: http[0] }).catch(() => null);
    if (!answer) return "failed"; // unreachable: maybe later
    const info = answer.json;
    if (answer.status !== 200 || typeof info?.session !== "string") {
      // The handler's refusal (403, 404...) would be the same on any transport.
      return answer.status >= 500 || answer.status === 429 ? "failed" : "refused";
    }
    if (!this.#alive(life)) return this.#tellClose({ id: info.session, token: info.token }, 1000, ""); // closed meanwhile
    Object.assign(life, {
      id: info.session,
      token: info.token,
      timeout: (info.timeout ?? 10) * 1000,
      maxBody: info.max_body ?? 2 ** 20,
      heartbeat: (info.heartbeat ?? 15) * 1000,
    });
    if (http[0] === "sse") {
      const how = await this.#stream(life);
      if (how === "ready" || !this.#alive(life)) return "open";
      if (!http.includes("polling")) {
        this.#tellClose(life, 1000, "");
        life.id = null;
        return "failed";
      }
      // No "ready" in time (a buffering proxy) or no stream at all: poll in
      // the same session; the first poll reports a session gone (404, 421).
    }
    this.#startPolling(life);
    return "open";
  }

  #opened(life, transport) {
    this.#transport = this.#preferred = transport;
    if (this.#readyState !== CONNECTING) return; // sse -> polling in an open session
    this.#readyState = OPEN;
    this.#everOpen = true;
    this.#retries = 0;
    if (life.id && globalThis.navigator?.sendBeacon && globalThis.addEventListener) {
      // A page going away cannot wait for a POST; without this beacon the
      // handler would see 1006 only when the session times out.
      life.onPageHide = () => navigator.sendBeacon(this.#endpoint(life, "close"), JSON.stringify({ code: 1001, reason: "" }));
      globalThis.addEventListener("pagehide", life.onPageHide);
    }
    this.#fire("open");
  }

  // -- down: SSE and polling ------------------------------------------------

  /** One EventSource; resolves "ready", "timeout" (no ready in time) or
   * "error" (failed before ready). What happens after ready, it handles. */
  #stream(life) {
    return new Promise((resolve) => {
      if (typeof EventSource !== "function") return resolve("error");
      // We reopen streams ourselves, with `last`: EventSource's own reconnection
      // has no backoff and hides the HTTP status.
      const es = (life.es = new EventSource(this.#endpoint(life, "sse", `&last=${life.last}`)));
      let pending = true;
      let watchdog = 0;
      const mine = () => life.es === es && this.#alive(life);
      const settle = (how) => {
        if (pending) { pending = false; clearTimeout(timer); resolve(how); }
      };
      const drop = () => {
        clearTimeout(watchdog);
        es.close();
        if (life.es === es) life.es = null;
        settle("error"); // if nothing settled it (the life ended meanwhile)
      };
      // Comments (the heartbeat) are invisible to EventSource, but each stream
      // starts with "ready" and is recycled every minute: silence for longer
      // than that means a dead connection that nobody closed.
      const live = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => ended(true), STREAM_LIFE + 2 * life.heartbeat);
      };
      const ready = () => {
        if (!mine()) return;
        live();
        if (!pending) return;
        life.sseFailures = 0;
        settle("ready");
        this.#opened(life, "sse");
      };
      const timer = setTimeout(() => {
        settle("timeout");
        drop();
      }, this.#options.sseReadyTimeout);
      life.ctl.signal.addEventListener("abort", drop, { once: true });
      es.addEventListener("ready", ready);
      es.addEventListener("message", (event) => {
        if (!mine()) return;
        ready(); // a message proves the stream works, even without "ready"
        const message = parseJSON(event.data);
        this.#receive(life, Number(event.lastEventId), message?.[0], message?.[1]);
      });
      es.addEventListener("close", (event) => {
        if (!mine()) return;
        const info = parseJSON(event.data) ?? {};
        this.#ended(life, info.code ?? 1005, info.reason ?? "", true, { retry: RETRY_CODES.has(info.code) });
      });
      // The server ended this stream (recycle) or it broke (error): after
      // "ready", reopen it; before, the caller decides.
      const ended = (failed) => {
        if (!mine()) return;
        const opened = !pending;
        drop();
        if (opened) this.#restream(life, failed);
      };
      es.addEventListener("recycle", () => ended(false));
      es.addEventListener("error", () => ended(true));
    });
  }

  /** Open the next stream of a session: at once after a recycle, after a
   * backoff and a check that the session still exists after a failure. */
  async #restream(life, failed) {
    if (failed) {
      await sleep(backoff(life.sseFailures++, life.timeout / 2), life.ctl.signal);
      // EventSource hides the status; an ack POST gets 404, 403 or 421 if the
      // session is gone or elsewhere (and #sessionError ends it).
      if (this.#alive(life)) await this.#pump(life, true);
      if (!this.#alive(life)) return;
    }
    const how = await this.#stream(life);
    if (!this.#alive(life) || how === "ready") return;
    if (how === "error") return this.#restream(life, true);
    // The stream stopped getting through in time (a proxy began to buffer).
    if (this.#options.transports.includes("polling")) this.#startPolling(life);
    else this.#fail(life, 1006, "the SSE stream does not get through");
  }

  #startPolling(life) {
    life.es?.close();
    life.es = null;
    this.#opened(life, "polling");
    this.#poll(life);
  }

  async #poll(life) {
    let failures = 0;
    while (this.#alive(life)) {
      const query = `&last=${life.last}`; // also tells the server what we have
      const answer = await this.#request(life, "poll", undefined, query, POLL_WAIT + life.timeout).catch(() => null);
      if (!this.#alive(life)) return;
      if (answer?.status === 200 && answer.json) {
        failures = 0;
        for (const item of answer.json.messages ?? []) {
          this.#receive(life, item?.[0], item?.[1], item?.[2]);
          if (!this.#alive(life)) return;
        }
        const end = answer.json.close;
        if (end) return this.#ended(life, end.code ?? 1005, end.reason ?? "", true, { retry: RETRY_CODES.has(end.code) });
      } else if (answer && !retriable(answer.status)) {
        return this.#sessionError(life, answer.status, answer.json);
      } else {
        await sleep(backoff(failures++, life.timeout / 2), life.ctl.signal); // network error, timeout, 5xx
      }
    }
  }

  /** Deliver message `seq` once: the server sends again what we may have missed. */
  #receive(life, seq, kind, payload) {
    if (!this.#alive(life) || !(seq > life.last)) return; // also NaN and garbage
    let data;
    try {
      data = decodeMessage(kind, payload, this.#binaryType);
    } catch (error) {
      return this.#fail(life, 1002, error.message);
    }
    life.last = seq;
    this.#fire("message", { data });
    // Acknowledge, so the server can forget what we have (its outbox is bounded).
    if (life.last - life.acked >= ACK_EVERY) this.#ack(life);
    else if (!life.ackTimer) {
      life.ackTimer = setTimeout(() => {
        life.ackTimer = 0;
        if (life.last > life.acked) this.#ack(life);
      }, ACK_AFTER);
    }
  }

  /** Tell the server what we have: with the next upload, or, while one is in
   * progress, in a POST of its own (the server lets an ack alone through: the
   * upload may be waiting for a handler that waits for this very ack). */
  #ack(life) {
    if (!life.pumping) {
      this.#pump(life, true);
      return;
    }
    if (life.acking || !this.#alive(life)) return;
    const ack = life.last;
    life.acking = this.#request(life, "send", `{"seq":${life.nextSeq},"messages":[],"ack":${ack}}`)
      .then((answer) => {
        if (answer?.status === 200) life.acked = Math.max(life.acked, ack);
      })
      .catch(() => null)
      .finally(() => {
        life.acking = null;
      });
  }

  // -- up: one POST at a time, everything queued meanwhile in the next ---------

  #pump(life, ack = false) {
    if (ack) life.forceAck = true;
    if (!life.pumping) life.pumping = this.#pumpLoop(life);
    return life.pumping; // the running loop sees the new entries and flags
  }

  async #pumpLoop(life) {
    let failures = 0;
    try {
      await null; // what is sent in the same task goes in one POST
      for (;;) {
        for (const entry of life.outbox) if (entry.ready) await entry.ready; // Blobs being read
        if (!this.#alive(life)) return;
        const batch = this.#batch(life);
        if (!batch.length && life.outbox.length) return this.#fail(life, 1009, "message over the fallback's max_body");
        if (!batch.length && !life.forceAck) return;
        life.forceAck = false;
        const ack = life.last;
        const seq = batch.length ? batch[0].seq : life.nextSeq;
        const body = `{"seq":${seq},"messages":[${batch.map((e) => e.json).join(",")}],"ack":${ack}}`;
        // After a network error or a timeout it is sent again: the server skips what it has.
        const answer = await this.#request(life, "send", body).catch(() => null);
        if (!this.#alive(life)) return;
        const received = answer?.status === 200 ? answer.json?.received : undefined;
        if (typeof received === "number") {
          while (life.outbox.length && life.outbox[0].seq <= received) life.buffered -= life.outbox.shift().size;
          life.acked = Math.max(life.acked, ack);
          if (!batch.length || received >= batch.at(-1).seq) {
            failures = 0;
            continue;
          }
        } else if (answer?.status === 413) {
          return this.#fail(life, 1009, "message over the fallback's max_body");
        } else if (answer && !retriable(answer.status)) {
          return this.#sessionError(life, answer.status, answer.json);
        }
        life.forceAck = true; // what failed is still due (and a probe must reach the server)
        await sleep(backoff(failures++, life.timeout / 2), life.ctl.signal);
      }
    } catch (error) {
      this.#fail(life, 1006, `could not send: ${error?.message ?? error}`); // a Blob that could not be read
    } finally {
      life.pumping = null; // at once when the loop decides it is done: no send() is missed
    }
  }

  /** The oldest queued messages that fit in one body of max_body bytes. */
  #batch(life) {
    const batch = [];
    let size = 64; // {"seq":N,"messages":[],"ack":A}
    for (const entry of life.outbox) {
      if (entry.ready || size + entry.size + 1 > life.maxBody) break;
      size += entry.size + 1;
      batch.push(entry);
    }
    return batch;
  }

  // -- the end ----------------------------------------------------------------

  async #closeSession(life, code, reason) {
    // What send() queued leaves first, as over a WebSocket (bounded wait).
    if (life.pumping) await Promise.race([life.pumping, sleep(life.timeout / 2, life.ctl.signal)]);
    if (!this.#alive(life)) return;
    const answer = await this.#request(life, "close", { code, reason }, "", life.timeout / 2).catch(() => null);
    // The stream or poll may have brought the server's "close" first: then
    // this life has ended already and #ended does nothing.
    if (answer?.status === 200) this.#ended(life, code, reason, true);
    else this.#ended(life, 1006, "", false, { error: true });
  }

  #sessionError(life, status, info) {
    if (status === 404) return this.#ended(life, 1006, "session gone", false, { retry: true });
    if (status === 403) return this.#ended(life, 1008, "wrong session token", false, { error: true, retry: true });
    if (status === 421) {
      // A restarted server answers 421 too (its predecessor's sessions look
      // like another process's): start over once. A second 421 within a
      // minute is requests going to several processes: stop, and say why.
      const again = Date.now() - this.#misdirectedAt < 60000;
      this.#misdirectedAt = Date.now();
      if (!again) return this.#ended(life, 1006, "session in another process", false, { retry: true });
      console.warn(
        "fastws: this session lives in another server process (HTTP 421). The HTTP fallback keeps a session " +
          "in the process that opened it: behind several processes or nodes the proxy must send all of a " +
          "client's requests to the same one (sticky sessions), or run one process (--workers 1). " +
          "Not reconnecting.",
        info?.error ?? "",
      );
      return this.#ended(life, 1006, "session in another process", false, { error: true });
    }
    this.#fail(life, 1002, `HTTP ${status}${info?.error ? `: ${info.error}` : ""}`); // 400, 411...: a bug
  }

  /** End the session from here, telling the server why. */
  #fail(life, code, reason) {
    if (!this.#alive(life)) return;
    if (life.id) this.#tellClose(life, code, reason);
    this.#ended(life, code, reason, false, { error: true });
  }

  /** A close POST nobody waits for (not under the life's signal: it is ending). */
  #tellClose(session, code, reason) {
    this.#request(session, "close", { code, reason }, "", POST_TIMEOUT, null).catch(() => {});
  }

  #ended(life, code, reason, wasClean, { error = false, retry = false } = {}) {
    if (!this.#alive(life)) return;
    life.ctl.abort(); // its streams, polls, POSTs and timers
    clearTimeout(life.ackTimer);
    life.es?.close();
    if (life.ws) {
      life.ws.onmessage = life.ws.onerror = life.ws.onclose = null;
      if (life.ws.readyState < CLOSING) life.ws.close();
    }
    if (life.onPageHide) globalThis.removeEventListener("pagehide", life.onPageHide);
    this.#readyState = CLOSED;
    if (error) this.#fire("error");
    this.#fire("close", { code, reason, wasClean });
    this.#transport = null;
    if (retry && this.#everOpen && this.#options.reconnect && !this.#closing && this.#life === life) {
      this.#readyState = CONNECTING;
      this.#connect(backoff(this.#retries++));
    }
  }

  // -- plumbing -----------------------------------------------------------------

  #endpoint(session, name, query = "") {
    const { id, token } = session;
    return `${this.#origin}${PREFIX}${name}?s=${encodeURIComponent(id)}&t=${encodeURIComponent(token)}${query}`;
  }

  /** A fallback request: its status and JSON body (null if not JSON). Throws
   * on network errors, timeouts and aborts. */
  async #request(session, name, body, query = "", timeout = POST_TIMEOUT, signal = session.ctl?.signal) {
    const signals = signal ? [signal, AbortSignal.timeout(timeout)] : [AbortSignal.timeout(timeout)];
    const init = { cache: "no-store", signal: anySignal(signals) };
    if (body !== undefined) {
      init.method = "POST";
      init.headers = { "Content-Type": "application/json" };
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    const url = name === "open" ? `${this.#origin}${PREFIX}open` : this.#endpoint(session, name, query);
    const response = await fetch(url, init);
    return { status: response.status, json: parseJSON(await response.text()) }; // a proxy's error page is not JSON
  }

  #fire(type, init = {}) {
    let event;
    if (type === "message" && typeof MessageEvent === "function") event = new MessageEvent(type, init);
    else if (type === "close" && typeof CloseEvent === "function") event = new CloseEvent(type, init);
    else {
      event = new Event(type);
      for (const key in init) Object.defineProperty(event, key, { value: init[key], enumerable: true });
    }
    this.dispatchEvent(event);
  }
}

function retriable(status) {
  return status === 409 || status === 429 || status >= 500; // busy, or a proxy between restarts
}

// onopen, onmessage, onerror, onclose: as on WebSocket, one handler each
// beside the listeners of addEventListener.
for (const type of ["open", "message", "error", "close"]) {
  const handlers = new WeakMap();
  Object.defineProperty(FastWS.prototype, `on${type}`, {
    get() { return handlers.get(this)?.fn ?? null; },
    set(fn) {
      const old = handlers.get(this);
      if (old) this.removeEventListener(type, old.listener);
      handlers.delete(this);
      if (typeof fn !== "function") return;
      const entry = { fn, listener: (event) => fn.call(this, event) };
      handlers.set(this, entry);
      this.addEventListener(type, entry.listener);
    },
    configurable: true,
    enumerable: true,
  });
}
for (const [name, value] of Object.entries({ CONNECTING, OPEN, CLOSING, CLOSED })) {
  Object.defineProperty(FastWS.prototype, name, { value, enumerable: true });
}

globalThis.FastWS = FastWS;

/** For fastws's own tests: not an API. */
export const _internal = Object.freeze({ resolveUrl, encodeMessage, decodeMessage, toBase64, fromBase64, backoff });
export { FastWS };
