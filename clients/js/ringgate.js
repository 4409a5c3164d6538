// ringgate.js — browser (and Node ≥ 20 with a global WebSocket) client for
// the ringgate gateway: one ES module, no runtime dependencies.
//
// What it does (WEB.md "Client behaviour", PROTOCOL.md):
// - connects with WebSocket (`/v1/ws`, subprotocol `ringgate.v1`, one
//   binary message per frame) and trusts the socket only after CONNACK 0
//   and a PING/PONG round trip (a WebSocket that opens but carries no
//   frames, as some middleboxes do, counts as failed);
// - reconnects with exponential backoff and jitter; DISCONNECT 6 right
//   after a win reconnects at once;
// - keeps `last_seq` (the highest seq received with nothing missing
//   below it) through a storage hook, `localStorage` by default;
// - acknowledges PUSHes cumulatively, drops duplicates by seq;
// - retries every SEND with the same `client_msg_id` until SENDACKed.
//
// Transports: the list `transports` is tried in order; only "ws" is
// implemented today, because the server does not serve SSE + POST and
// long-poll yet (they are specified in WEB.md). A transport that fails is
// skipped on the next attempts until every transport has failed once.

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
};

/** `last_seq` storage: localStorage when there is one, else memory. */
export function defaultStore(key) {
  const ls = typeof localStorage !== "undefined" ? localStorage : null;
  let mem = 0n;
  return {
    load: () => (ls ? BigInt(ls.getItem(key) || "0") : mem),
    save: (v) => { if (ls) ls.setItem(key, v.toString()); else mem = v; },
  };
}

/** One WebSocket attempt: resolves with an open, confirmed link or rejects. */
function openWs(base, connectFrame, timeoutMs, onFrame, onClose) {
  return new Promise((resolve, reject) => {
    const url = base.replace(/^http/, "ws").replace(/\/$/, "") + "/v1/ws";
    let ws;
    try { ws = new WebSocket(url, "ringgate.v1"); } catch (e) { reject(e); return; }
    ws.binaryType = "arraybuffer";
    let stage = "open"; // open → connack → pong → up
    const nonce = BigInt(Date.now());
    const timer = setTimeout(() => fail(new Error(`WebSocket: no ${stage} within ${timeoutMs} ms`)), timeoutMs);
    const link = { send: (b) => ws.send(b), close: () => { try { ws.close(1000); } catch (_) { /* closed */ } }, kind: "ws" };
    let connack = null;
    const pending = [];
    function fail(e) {
      if (stage === "up") return;
      stage = "failed";
      clearTimeout(timer);
      link.close();
      reject(e);
    }
    ws.onopen = () => { stage = "connack"; ws.send(connectFrame); };
    ws.onerror = () => fail(new Error("WebSocket error"));
    ws.onclose = (ev) => { if (stage === "up") onClose(ev.code); else fail(Object.assign(new Error(`WebSocket closed ${ev.code}`), { code: ev.code, connack })); };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") return fail(new Error("text message"));
      let f;
      try { f = frames.decode(new Uint8Array(ev.data)); } catch (e) { return fail(e); }
      if (stage === "up") return onFrame(f);
      if (stage === "connack" && f.type === "connack") {
        connack = f;
        if (f.status !== 0) return fail(Object.assign(new Error(`CONNACK ${f.status}`), { connack: f }));
        stage = "pong";
        ws.send(frames.ping(nonce));
      } else if (stage === "pong" && f.type === "pong" && f.nonce === nonce) {
        stage = "up";
        clearTimeout(timer);
        resolve({ link, connack, early: pending });
      } else {
        // Replayed PUSHes may arrive before our PONG: keep them in order.
        pending.push(f);
      }
    };
  });
}

export class RinggateClient {
  /**
   * @param {object} o
   * @param {string} o.url  base URL of the gateway, e.g. "https://im.example.com:7443"
   * @param {string|function(): (string|Promise<string>)} o.token  a JWT, or a function giving a fresh one per connect
   * @param {string} o.deviceId
   * @param {function(object): void} [o.onMessage]  called once per new PUSH ({seq, from, payload, ...})
   * @param {function(string, object=): void} [o.onState]  "connecting", "up", "down", "failed"
   * @param {{load(): bigint, save(bigint): void}} [o.store]  last_seq persistence (default localStorage)
   * @param {string[]} [o.transports]  order to try; only "ws" is served today
   */
  constructor(o) {
    this.url = o.url;
    this.token = o.token;
    this.deviceId = o.deviceId;
    this.onMessage = o.onMessage || (() => {});
    this.onState = o.onState || (() => {});
    this.store = o.store || defaultStore(`ringgate.last_seq.${o.deviceId}`);
    this.transports = (o.transports || ["ws"]).filter((t) => t === "ws");
    this.backoff = { baseMs: 500, capMs: 30000, jitter: 0.5, ...(o.backoff || {}) };
    this.attemptTimeoutMs = o.attemptTimeoutMs || 30000;
    this.lastSeq = this.store.load();
    this.outbox = new Map(); // client_msg_id → {frame, resolve, reject}
    this.idSeq = 0n;
    this.link = null;
    this.closed = false;
    this.failures = 0;
    this.pingTimer = null;
  }

  /** Connects (and keeps reconnecting until `close`). */
  start() { this.closed = false; this.#loop(); return this; }

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
  }

  async #loop() {
    let delay = 0;
    while (!this.closed) {
      if (delay) await new Promise((r) => setTimeout(r, delay));
      if (this.closed) return;
      this.onState("connecting");
      let lost;
      const down = new Promise((r) => { lost = r; });
      const wonAt = Date.now();
      try {
        const token = typeof this.token === "function" ? await this.token() : this.token;
        const connect = frames.connect(token, this.deviceId, this.lastSeq);
        const { link, connack, early } = await openWs(this.url, connect, this.attemptTimeoutMs,
          (f) => this.#onFrame(f, lost), (code) => lost({ code }));
        if (this.closed) { link.close(); return; }
        this.link = link;
        this.failures = 0;
        if (this.lastSeq + 1n < connack.oldestSeq) {
          // Lost beyond retention: the server replays from oldest_seq.
          this.onState("gap", { from: this.lastSeq + 1n, to: connack.oldestSeq - 1n });
          this.lastSeq = connack.oldestSeq - 1n;
        }
        this.onState("up", connack);
        for (const f of early) this.#onFrame(f, lost);
        for (const { frame } of this.outbox.values()) link.send(frame);
        clearInterval(this.pingTimer);
        const every = Math.max(1, connack.heartbeatS) * 500;
        this.pingTimer = setInterval(() => { try { link.send(frames.ping(BigInt(Date.now()))); } catch (_) { /* gone */ } }, every);
        const why = await down;
        clearInterval(this.pingTimer);
        this.link = null;
        link.close();
        this.onState("down", why);
        // Replaced right after a win (two attempts of this device): at once.
        delay = why.reason === 6 && Date.now() - wonAt < this.attemptTimeoutMs ? 0 : this.#nextDelay();
      } catch (e) {
        const s = e.connack && e.connack.status;
        if (s === 1 || s === 2 || s === 4) {
          this.onState("failed", e);
          this.closed = true;
          for (const w of this.outbox.values()) w.reject(e);
          this.outbox.clear();
          return;
        }
        this.onState("down", e);
        delay = this.#nextDelay();
      }
    }
  }

  #nextDelay() {
    const { baseMs, capMs, jitter } = this.backoff;
    const d = Math.min(capMs, baseMs * 2 ** Math.min(this.failures++, 20));
    return Math.round(d * (1 - jitter * Math.random()));
  }

  #onFrame(f, lost) {
    switch (f.type) {
      case "push":
        // Dense seqs: anything at or below last_seq is a duplicate.
        if (f.seq > this.lastSeq) {
          if (f.seq === this.lastSeq + 1n) {
            this.lastSeq = f.seq;
            this.store.save(f.seq);
            this.onMessage(f);
          }
          // A gap cannot happen on one connection; if it did, the cursor stays
          // and the server's replay fills it on the next connect.
        }
        if (this.link) this.link.send(frames.pushack(this.lastSeq));
        break;
      case "sendack": {
        const w = this.outbox.get(f.clientMsgId);
        if (w && f.status !== 5) { this.outbox.delete(f.clientMsgId); w.resolve(f); }
        break;
      }
      case "ping": if (this.link) this.link.send(frames.pong(f.nonce)); break;
      case "disconnect": lost({ reason: f.reason, message: f.message }); break;
      default: break;
    }
  }
}
