// ringgate.js — browser (and Node ≥ 20 with a global WebSocket) client for
// the ringgate gateway: one ES module, no runtime dependencies.
//
// What it does (WEB.md "Client behaviour" and its transports, PROTOCOL.md):
// - moves the frames of PROTOCOL.md over one of three transports, tried in
//   the order of `transports`:
//     "ws"  WebSocket `/v1/ws`, subprotocol `ringgate.v1`, one binary
//           message per frame;
//     "sse" server-sent events `GET /v1/sse?connect=<base64url CONNECT>`
//           (event `frame` = one standard-base64 frame, event `session` =
//           the sid) for the downlink, `POST /v1/send?sid=` for the uplink;
//     "lp"  long-poll: `POST /v1/lp/connect` (CONNACK in the body, sid in
//           `X-Ringgate-Session`), then a loop of `POST /v1/lp?sid=`, each
//           carrying the client frames queued so far;
// - trusts a transport only after CONNACK 0 and a PING/PONG round trip
//   through it (a WebSocket that opens but carries no frames, as some
//   middleboxes do, or an event stream a proxy buffers, counts as failed)
//   and falls back to the next one;
// - reconnects with exponential backoff and jitter; DISCONNECT 6 right
//   after a win reconnects at once; a fresh token for every attempt;
// - keeps `last_seq` (the highest seq received with nothing missing
//   below it) through a storage hook, `localStorage` by default;
// - acknowledges PUSHes cumulatively (one PUSHACK per turn of the event
//   loop), drops duplicates by seq;
// - retries every SEND with the same `client_msg_id` on every reconnect
//   until SENDACKed (SENDACK 5, "busy", is retried too).
//
// Fallback memory: a transport that failed in a round where a later one
// won is tried last in the following rounds (so a broken WebSocket costs
// one `attemptTimeoutMs` once, not at every reconnect); when every
// transport fails in a round the memory is cleared and the list order
// applies again after the backoff.

const T = { CONNECT: 1, CONNACK: 2, SEND: 3, SENDACK: 4, PUSH: 5, PUSHACK: 6, PING: 7, PONG: 8, DISCONNECT: 9 };
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Builds one frame: u32 length, u8 type, body. */
class Writer {
  constructor() { this.parts = []; this.len = 0; }
  bytes(b) { this.parts.push(b); this.len += b.length; return this; }
  u8(v) { return this.bytes(Uint8Array.of(v)); }
  u16(v) { return this.bytes(Uint8Array.of(v >> 8, v & 0xff)); }
  u64(v) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(v)); return this.bytes(b); }
  str(s) { const b = enc.encode(s); return this.u16(b.length).bytes(b); }
  frame(type) {
    const out = new Uint8Array(5 + this.len);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, this.len + 1);
    out[4] = type;
    let o = 5;
    for (const p of this.parts) { out.set(p, o); o += p.length; }
    return out;
  }
}

/** Reads a frame body field by field; throws on truncation. */
class Reader {
  constructor(b) { this.b = b; this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength); this.o = 0; }
  need(n) { if (this.o + n > this.b.length) throw new Error("truncated frame"); }
  u8() { this.need(1); return this.b[this.o++]; }
  u16() { this.need(2); const v = this.dv.getUint16(this.o); this.o += 2; return v; }
  u32() { this.need(4); const v = this.dv.getUint32(this.o); this.o += 4; return v; }
  u64() { this.need(8); const v = this.dv.getBigUint64(this.o); this.o += 8; return v; }
  str() { const n = this.u16(); this.need(n); const s = dec.decode(this.b.subarray(this.o, this.o + n)); this.o += n; return s; }
  rest() { const r = this.b.slice(this.o); this.o = this.b.length; return r; }
}

export const frames = {
  connect: (token, deviceId, lastSeq, keepaliveS = 0) =>
    new Writer().u8(1).u16(keepaliveS).str(deviceId).str(token).u64(lastSeq).frame(T.CONNECT),
  send: (id, kind, target, payload) => new Writer().u64(id).u8(kind).str(target).bytes(payload).frame(T.SEND),
  pushack: (seq) => new Writer().u64(seq).frame(T.PUSHACK),
  ping: (nonce) => new Writer().u64(nonce).frame(T.PING),
  pong: (nonce) => new Writer().u64(nonce).frame(T.PONG),
  disconnect: (reason, msg = "") => new Writer().u8(reason).str(msg).frame(T.DISCONNECT),
  /** Decodes one whole frame (length prefix included). */
  decode(bytes) {
    const r = new Reader(bytes);
    const len = r.u32();
    if (len + 4 !== bytes.length || len < 1) throw new Error("not exactly one frame");
    const type = r.u8();
    switch (type) {
      case T.CONNACK: return { type: "connack", status: r.u8(), userId: r.str(), heartbeatS: r.u16(), maxFrame: r.u32(),
        oldestSeq: r.u64(), headSeq: r.u64(), serverTimeMs: r.u64() };
      case T.SENDACK: return { type: "sendack", clientMsgId: r.u64(), status: r.u8(), msgId: r.u64(), timestampMs: r.u64() };
      case T.PUSH: return { type: "push", seq: r.u64(), msgId: r.u64(), timestampMs: r.u64(), from: r.str(), flags: r.u8(), payload: r.rest() };
      case T.PING: return { type: "ping", nonce: r.u64() };
      case T.PONG: return { type: "pong", nonce: r.u64() };
      case T.DISCONNECT: return { type: "disconnect", reason: r.u8(), message: r.str() };
      default: throw new Error(`unexpected frame type ${type}`);
    }
  },
  /** Splits a byte string holding whole frames (a long-poll body) into frames. */
  split(bytes) {
    const out = [];
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let o = 0;
    while (o < bytes.length) {
      if (o + 4 > bytes.length) throw new Error("partial frame in body");
      const end = o + 4 + dv.getUint32(o);
      if (end > bytes.length) throw new Error("partial frame in body");
      out.push(bytes.subarray(o, end));
      o = end;
    }
    return out;
  },
};

/** base64url without padding (the SSE `connect` parameter). */
export function base64url(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Standard (padded) base64 → bytes (SSE `frame` events). */
function fromBase64(s) {
  const bin = atob(s.trim());
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function concat(list) {
  let n = 0;
  for (const b of list) n += b.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const b of list) { out.set(b, o); o += b.length; }
  return out;
}

/** `last_seq` storage: localStorage when there is one, else memory. */
export function defaultStore(key) {
  let ls = null;
  try { ls = typeof localStorage !== "undefined" ? localStorage : null; } catch (_) { /* blocked storage */ }
  let mem = 0n;
  return {
    load: () => {
      try { return ls ? BigInt(ls.getItem(key) || "0") : mem; } catch (_) { return mem; }
    },
    save: (v) => {
      mem = v;
      try { if (ls) ls.setItem(key, v.toString()); } catch (_) { /* quota or blocked: memory only */ }
    },
  };
}

const base = (url) => url.replace(/\/+$/, "");

/**
 * The three transports. Each `open(ctx)` resolves with a link
 * `{kind, send(frameBytes), close()}` once the transport is up, and
 * delivers every server frame to `ctx.frame(bytes)` and the end of the
 * link (once) to `ctx.lost(why)`. Confirmation (CONNACK, PING/PONG) is
 * done above them, the same for all.
 */
const transports = {
  ws(ctx) {
    return new Promise((resolve, reject) => {
      const url = base(ctx.url).replace(/^http/, "ws") + "/v1/ws";
      let ws;
      try { ws = new WebSocket(url, "ringgate.v1"); } catch (e) { reject(e); return; }
      ws.binaryType = "arraybuffer";
      let open = false;
      ctx.cancel = () => { try { ws.close(); } catch (_) { /* closed */ } };
      const link = {
        kind: "ws",
        send: (b) => { if (ws.readyState === 1) ws.send(b); },
        close: () => { try { ws.close(1000); } catch (_) { /* closed */ } },
      };
      ws.onopen = () => { open = true; ws.send(ctx.connect); resolve(link); };
      ws.onerror = () => { if (!open) reject(new Error("WebSocket refused")); };
      ws.onclose = (ev) => {
        if (!open) reject(Object.assign(new Error(`WebSocket closed ${ev.code}`), { code: ev.code }));
        else ctx.lost({ code: ev.code });
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data === "string") { link.close(); ctx.lost({ error: "text message" }); return; }
        ctx.frame(new Uint8Array(ev.data));
      };
    });
  },

  sse(ctx) {
    return new Promise((resolve, reject) => {
      if (typeof EventSource === "undefined") { reject(new Error("no EventSource")); return; }
      const root = base(ctx.url);
      const es = new EventSource(`${root}/v1/sse?connect=${base64url(ctx.connect)}`);
      let sid = null;
      let ended = false;
      let queue = [];
      let posting = false;
      const end = (why) => {
        if (ended) return;
        ended = true;
        es.close();
        ctx.lost(why);
      };
      ctx.cancel = () => { ended = true; es.close(); };
      // Uplink: POSTs in order, one at a time, each carrying every frame
      // queued meanwhile (frames must reach the session in order).
      const flush = async () => {
        if (posting || ended || !sid || queue.length === 0) return;
        posting = true;
        const body = concat(queue);
        queue = [];
        try {
          const r = await fetch(`${root}/v1/send?sid=${encodeURIComponent(sid)}`, {
            method: "POST", body, headers: { "Content-Type": "application/octet-stream" }, cache: "no-store",
          });
          if (r.status !== 204) end({ status: r.status });
        } catch (e) {
          end({ error: String(e) });
        }
        posting = false;
        flush();
      };
      const link = {
        kind: "sse",
        send: (b) => { queue.push(b); queueMicrotask(flush); },
        close: () => { ended = true; es.close(); },
      };
      es.addEventListener("frame", (ev) => {
        let bytes;
        try { bytes = fromBase64(ev.data); } catch (e) { end({ error: "bad base64" }); return; }
        ctx.frame(bytes);
      });
      es.addEventListener("session", (ev) => {
        sid = ev.data.trim();
        resolve(link);
        flush();
      });
      // The browser would reconnect by itself with the same (stale) CONNECT:
      // we reconnect ourselves instead, with a fresh token and backoff.
      es.onerror = () => {
        if (!sid) { es.close(); ended = true; reject(new Error("event stream refused or ended")); }
        else end({ error: "event stream ended" });
      };
    });
  },

  async lp(ctx) {
    const root = base(ctx.url);
    const post = (path, body, signal) => fetch(root + path, {
      method: "POST", body, signal, headers: { "Content-Type": "application/octet-stream" }, cache: "no-store",
    });
    const ac = typeof AbortController !== "undefined" ? new AbortController() : null;
    ctx.cancel = () => { if (ac) ac.abort(); };
    const r = await post("/v1/lp/connect", ctx.connect, ac && ac.signal);
    if (r.status !== 200) throw Object.assign(new Error(`long-poll connect: HTTP ${r.status}`), { status: r.status });
    const sid = r.headers.get("X-Ringgate-Session");
    const body = new Uint8Array(await r.arrayBuffer());
    // The CONNACK comes in the body even when it refuses (then no sid).
    for (const f of frames.split(body)) ctx.frame(f);
    if (!sid) throw new Error("long-poll connect: no session");
    let queue = [];
    let ended = false;
    let gen = 0; // the newest poll; an older one still open was ended (204) by it
    const end = (why) => { if (!ended) { ended = true; ctx.lost(why); } };
    const poll = async () => {
      if (ended) return;
      const mine = ++gen;
      const out = concat(queue);
      queue = [];
      let resp;
      let bytes;
      try {
        resp = await post(`/v1/lp?sid=${encodeURIComponent(sid)}`, out);
        bytes = resp.status === 200 ? new Uint8Array(await resp.arrayBuffer()) : null;
      } catch (e) {
        end({ error: String(e) });
        return;
      }
      if (ended) return;
      if (resp.status === 404) { end({ status: 404 }); return; }
      if (resp.status !== 200 && resp.status !== 204) { end({ status: resp.status }); return; }
      if (bytes) {
        let list;
        try { list = frames.split(bytes); } catch (e) { end({ error: String(e) }); return; }
        for (const f of list) { ctx.frame(f); if (ended) return; }
      }
      // Only the newest poll keeps the loop going; it also carries what the
      // frames above queued (PUSHACK, PONG) without an extra request.
      if (mine === gen) poll();
    };
    // A frame to send opens a new poll at once (which ends the open one);
    // frames queued in one turn share it.
    let kicked = false;
    const kick = () => { kicked = false; if (!ended && queue.length) poll(); };
    return {
      kind: "lp",
      start: poll,
      send: (b) => { queue.push(b); if (!kicked) { kicked = true; queueMicrotask(kick); } },
      close: () => {
        if (ended) return;
        ended = true;
        // Deliver what is queued (a DISCONNECT on close) without waiting.
        if (queue.length) post(`/v1/lp?sid=${encodeURIComponent(sid)}`, concat(queue)).catch(() => {});
        queue = [];
      },
    };
  },
};

export const TRANSPORTS = Object.keys(transports);

/**
 * One attempt over one transport: resolves `{link, connack, early}` once
 * CONNACK 0 and the PONG of our PING came through it, or rejects (with
 * `connack` attached when the server refused).
 */
function attempt(kind, url, connectFrame, timeoutMs, onFrame, onLost) {
  return new Promise((resolve, reject) => {
    let stage = "connack"; // connack → pong → up | failed
    let link = null;
    let connack = null;
    // Frames before the caller takes over (replay before our PONG, and any
    // that came in the same batch after it, as a poll response does), in order.
    const early = [];
    let live = false;
    const nonce = BigInt(Date.now()) * 1000n + BigInt(Math.floor(Math.random() * 1000));
    const fail = (e) => {
      if (stage === "up" || stage === "failed") return;
      stage = "failed";
      clearTimeout(timer);
      // Not up yet: stop the transport too (a hanging stream or socket).
      if (link) link.close(); else if (ctx.cancel) ctx.cancel();
      reject(Object.assign(e, { transport: kind, connack }));
    };
    const timer = setTimeout(() => fail(new Error(`${kind}: no ${stage} within ${timeoutMs} ms`)), timeoutMs);
    const ctx = {
      url,
      connect: connectFrame,
      frame(bytes) {
        let f;
        try { f = frames.decode(bytes); } catch (e) {
          if (stage === "up") onLost({ error: String(e) }); else fail(e);
          return;
        }
        if (stage === "up") { if (live) onFrame(f); else early.push(f); return; }
        if (stage === "failed") return;
        if (stage === "connack") {
          if (f.type !== "connack") return fail(new Error(`${kind}: ${f.type} before CONNACK`));
          connack = f;
          if (f.status !== 0) return fail(new Error(`CONNACK ${f.status}`));
          stage = "pong";
          if (link) link.send(frames.ping(nonce));
        } else if (f.type === "pong" && f.nonce === nonce) {
          stage = "up";
          clearTimeout(timer);
          resolve({ link, connack, early, goLive: () => { live = true; } });
        } else if (f.type === "disconnect") {
          fail(Object.assign(new Error(`${kind}: DISCONNECT ${f.reason} before PONG`), { reason: f.reason }));
        } else {
          // Replayed PUSHes may arrive before our PONG: keep them in order.
          early.push(f);
        }
      },
      lost(why) {
        if (stage === "up") onLost(why);
        else fail(Object.assign(new Error(`${kind}: lost before up (${JSON.stringify(why)})`), why));
      },
    };
    transports[kind](ctx).then((l) => {
      if (stage === "failed") { l.close(); return; }
      link = l;
      // The CONNACK may have come with the link itself (long-poll); the
      // PING is queued first so that the first poll carries it.
      if (stage === "pong") link.send(frames.ping(nonce));
      if (l.start) l.start();
    }, fail);
  });
}

/** One line for an attempt's failure (an Error, a close event, a DISCONNECT...). */
function describe(e) {
  if (!e) return "failed";
  if (e.status) return `HTTP ${e.status}`;
  if (e.message) return e.message;
  if (e.error) return String(e.error);
  if (e.code !== undefined) return `closed (${e.code})`;
  return String(e);
}

export class RinggateClient {
  /**
   * @param {object} o
   * @param {string} o.url  base URL of the gateway, e.g. "https://im.example.com:7443"
   * @param {string|function(): (string|Promise<string>)} o.token  a JWT, or a function giving a fresh one per attempt
   * @param {string} o.deviceId
   * @param {function(object): void} [o.onMessage]  called once per new PUSH ({seq, from, payload, ...})
   * @param {function(string, object=): void} [o.onState]  "connecting" ({transport}), "up" (CONNACK, with .transport),
   *   "down" (why), "gap" ({from, to}), "failed" (error with .reason: the token or version was refused, or every
   *   transport failed `giveUpAfterRounds` rounds in a row before the first connection; no more reconnects)
   * @param {{load(): bigint, save(bigint): void}} [o.store]  last_seq persistence (default localStorage)
   * @param {string[]} [o.transports]  order to try, from "ws", "sse", "lp" (default all three)
   * @param {{baseMs, capMs, jitter}} [o.backoff]  reconnect backoff (default 500, 30000, 0.5)
   * @param {number} [o.attemptTimeoutMs]  per transport attempt, up to the PONG (default 10000)
   * @param {number} [o.giveUpAfterRounds]  rounds of every transport failing, before the client has ever
   *   connected, after which it stops with "failed" (default 3; Infinity = keep trying). A page whose origin
   *   the gateway refuses, or a certificate the browser does not trust, fails this way: the browser hides
   *   both from the page, so waiting longer cannot help. Once connected, the client retries forever.
   */
  constructor(o) {
    this.url = o.url;
    this.token = o.token;
    this.deviceId = o.deviceId;
    this.onMessage = o.onMessage || (() => {});
    this.onState = o.onState || (() => {});
    this.store = o.store || defaultStore(`ringgate.last_seq.${o.deviceId}`);
    const wanted = o.transports || TRANSPORTS;
    this.transports = wanted.filter((t) => TRANSPORTS.includes(t));
    if (this.transports.length === 0) throw new Error(`no known transport in ${JSON.stringify(wanted)}`);
    this.backoff = { baseMs: 500, capMs: 30000, jitter: 0.5, ...(o.backoff || {}) };
    this.attemptTimeoutMs = o.attemptTimeoutMs || 10000;
    this.giveUpAfterRounds = o.giveUpAfterRounds ?? 3;
    this.lastSeq = BigInt(this.store.load());
    this.outbox = new Map(); // client_msg_id → {frame, resolve, reject}
    this.idSeq = 0n;
    this.link = null;
    this.transport = null; // the kind of the link in use
    this.closed = true;
    this.gen = 0; // the running loop's number: a loop of an earlier start() stops
    this.failures = 0;
    this.demoted = new Set();
    this.pingTimer = null;
    this.ackPending = false;
    this.lastRx = 0;
    this.stats = { pushes: 0, duplicates: 0, ups: 0 };
  }

  /** Connects (and keeps reconnecting until `close`). */
  start() {
    if (!this.closed) return this;
    this.closed = false;
    this.#loop(++this.gen);
    return this;
  }

  /** Sends to a user (or a group with `{group: true}`); resolves with the SENDACK. */
  send(target, payload, { group = false } = {}) {
    const body = typeof payload === "string" ? enc.encode(payload) : payload;
    // Unique per device and never reused: time in ms, then a counter.
    const id = (BigInt(Date.now()) << 16n) | (this.idSeq++ & 0xffffn);
    const frame = frames.send(id, group ? 2 : 1, target, body);
    return new Promise((resolve, reject) => {
      this.outbox.set(id, { frame, resolve, reject });
      if (this.link) this.link.send(frame);
    });
  }

  close() {
    this.closed = true;
    clearInterval(this.pingTimer);
    if (this.link) { try { this.link.send(frames.disconnect(0)); } catch (_) { /* gone */ } this.link.close(); }
    this.link = null;
    if (this.wake) this.wake({ closed: true });
  }

  /** The transports in the order this round tries them. */
  #order() {
    const ok = this.transports.filter((t) => !this.demoted.has(t));
    return ok.concat(this.transports.filter((t) => this.demoted.has(t)));
  }

  async #loop(gen) {
    const stopped = () => this.closed || gen !== this.gen;
    let delay = 0;
    let quickBefore = false;
    let failedRounds = 0;
    while (!stopped()) {
      if (delay) await new Promise((r) => setTimeout(r, delay));
      if (stopped()) return;
      let lost;
      const down = new Promise((r) => { lost = r; });
      this.wake = lost;
      let won = null;
      let refused = null;
      const failedThisRound = [];
      const errors = [];
      for (const kind of this.#order()) {
        if (stopped()) return;
        this.onState("connecting", { transport: kind });
        try {
          const token = typeof this.token === "function" ? await this.token() : this.token;
          const connect = frames.connect(token, this.deviceId, this.lastSeq);
          won = await attempt(kind, this.url, connect, this.attemptTimeoutMs,
            (f) => this.#onFrame(f, lost), (why) => lost(why));
          won.kind = kind;
          break;
        } catch (e) {
          const s = e.connack && e.connack.status;
          if (s === 1 || s === 2 || s === 4) { refused = e; break; }
          failedThisRound.push(kind);
          errors.push(`${kind}: ${describe(e)}`);
          this.onState("down", e);
          // CONNACK 3 (busy) would be as busy on every transport: back off.
          if (s === 3) break;
        }
      }
      if (refused) {
        this.onState("failed", refused);
        this.closed = true;
        for (const w of this.outbox.values()) w.reject(refused);
        this.outbox.clear();
        return;
      }
      if (!won) {
        this.demoted.clear();
        failedRounds += 1;
        if (this.stats.ups === 0 && failedRounds >= this.giveUpAfterRounds && errors.length === this.#order().length) {
          const origin = typeof location !== "undefined" ? location.origin : "this page's origin";
          const err = new Error(`every transport failed ${failedRounds} times in a row without ever connecting`);
          err.reason = `${err.message} (${errors.join("; ")}). Check that ${this.url} is up, that the gateway lists `
            + `${origin} in web.allowed_origins (a refused origin gets 403, which the browser hides; the gateway logs `
            + `"refused an HTTP request from origin"), and that the browser trusts its certificate (open ${this.url}/v1/route once).`;
          err.errors = errors;
          this.onState("failed", err);
          this.closed = true;
          for (const w of this.outbox.values()) w.reject(err);
          this.outbox.clear();
          return;
        }
        delay = this.#nextDelay();
        continue;
      }
      failedRounds = 0;
      for (const k of failedThisRound) this.demoted.add(k);
      const { link, connack, early, goLive, kind } = won;
      if (stopped()) { link.close(); return; }
      const wonAt = Date.now();
      this.link = link;
      this.transport = kind;
      this.stats.ups += 1;
      this.lastRx = Date.now();
      if (this.lastSeq + 1n < connack.oldestSeq) {
        // Lost beyond retention: the server replays from oldest_seq.
        this.onState("gap", { from: this.lastSeq + 1n, to: connack.oldestSeq - 1n });
        this.lastSeq = connack.oldestSeq - 1n;
        this.store.save(this.lastSeq);
      }
      this.onState("up", Object.assign({ transport: kind }, connack));
      for (const f of early) this.#onFrame(f, lost);
      goLive();
      for (const { frame } of this.outbox.values()) link.send(frame);
      clearInterval(this.pingTimer);
      // PING at half the heartbeat; nothing received (not even a PONG) for
      // a whole heartbeat means the link is dead without having said so.
      const hbMs = Math.max(1, connack.heartbeatS) * 1000;
      this.pingTimer = setInterval(() => {
        if (Date.now() - this.lastRx > hbMs) { lost({ error: "no answer within the heartbeat" }); return; }
        try { link.send(frames.ping(BigInt(Date.now()))); } catch (_) { /* gone */ }
      }, hbMs / 2);
      const why = await down;
      clearInterval(this.pingTimer);
      this.link = null;
      this.transport = null;
      link.close();
      if (stopped()) return;
      this.onState("down", why);
      // A link that lasted resets the backoff; one that flaps keeps growing it.
      const lasted = Date.now() - wonAt;
      if (lasted >= this.attemptTimeoutMs) this.failures = 0;
      // Replaced right after a win (two attempts of this device): at once,
      // but not twice in a row (two tabs sharing a device id would fight).
      const quick = why.reason === 6 && lasted < this.attemptTimeoutMs && !quickBefore;
      quickBefore = quick;
      delay = quick ? 0 : this.#nextDelay();
    }
  }

  #nextDelay() {
    const { baseMs, capMs, jitter } = this.backoff;
    const d = Math.min(capMs, baseMs * 2 ** Math.min(this.failures++, 20));
    return Math.round(d * (1 - jitter * Math.random()));
  }

  /** One cumulative PUSHACK per turn of the event loop, however many PUSHes came. */
  #ackSoon() {
    if (this.ackPending) return;
    this.ackPending = true;
    queueMicrotask(() => {
      this.ackPending = false;
      if (this.link && this.lastSeq > 0n) this.link.send(frames.pushack(this.lastSeq));
    });
  }

  #onFrame(f, lost) {
    this.lastRx = Date.now();
    switch (f.type) {
      case "push":
        // Dense seqs: anything at or below last_seq is a duplicate.
        if (f.seq <= this.lastSeq) {
          this.stats.duplicates += 1;
        } else if (f.seq === this.lastSeq + 1n) {
          this.lastSeq = f.seq;
          this.store.save(f.seq);
          this.stats.pushes += 1;
          try { this.onMessage(f); } catch (e) { console.error("onMessage", e); }
        }
        // A gap (seq above last_seq + 1) cannot happen on one link in
        // order; if frames were reordered (two polls), the cursor stays and
        // the server's retransmission fills it.
        this.#ackSoon();
        break;
      case "sendack": {
        const w = this.outbox.get(f.clientMsgId);
        if (!w) break;
        if (f.status !== 5) { this.outbox.delete(f.clientMsgId); w.resolve(f); break; }
        // Busy: the same SEND again a little later (or on the next link).
        const again = Math.round(this.backoff.baseMs * (1 + Math.random()));
        setTimeout(() => { if (this.link && this.outbox.has(f.clientMsgId)) this.link.send(w.frame); }, again);
        break;
      }
      case "ping": if (this.link) this.link.send(frames.pong(f.nonce)); break;
      case "disconnect": lost({ reason: f.reason, message: f.message }); break;
      default: break;
    }
  }
}
