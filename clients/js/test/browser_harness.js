// The page side of tests/web_browser.rs: wraps ringgate.js in a small
// recorder (`window.h`) that the Rust test drives through the DevTools
// protocol (`Runtime.evaluate` with awaitPromise). Every value it returns is
// plain JSON (no BigInt), so `returnByValue` can carry it.
import { RinggateClient } from "/ringgate.js";

const dec = new TextDecoder();

/** One onState call as plain JSON. */
function describe(s, x) {
  const d = { s };
  if (x && typeof x === "object") {
    for (const k of ["transport", "status", "reason", "code", "message"]) {
      if (x[k] !== undefined && typeof x[k] !== "bigint") d[k] = x[k];
    }
    if (x instanceof Error) d.error = x.message;
    else if (x.error !== undefined) d.error = String(x.error);
  }
  return d;
}

export const h = {
  states: [],
  msgs: [],
  client: null,
  /** Starts a client; returns the last_seq it loaded from storage. */
  start(o) {
    this.client = new RinggateClient({
      backoff: { baseMs: 200, capMs: 2000, jitter: 0.5 },
      attemptTimeoutMs: 5000,
      ...o,
      onState: (s, x) => this.states.push(describe(s, x)),
      onMessage: (m) => this.msgs.push({
        seq: Number(m.seq), from: m.from, text: dec.decode(m.payload), redelivery: (m.flags & 1) === 1,
      }),
    }).start();
    return this.client.lastSeq.toString();
  },
  /** Resolves once `pred()` holds; rejects after `ms` with what was seen. */
  async until(pred, what, ms = 15000) {
    const end = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; seen: ${JSON.stringify(this.summary())}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.summary();
  },
  ups() { return this.states.filter((x) => x.s === "up").length; },
  /** Sends and resolves with the SENDACK's status (the promise of ringgate.js). */
  async send(to, text) {
    const ack = await this.client.send(to, text);
    return { status: ack.status, msgId: ack.msgId.toString() };
  },
  summary() {
    const c = this.client;
    return {
      states: this.states,
      msgs: this.msgs,
      transport: c ? c.transport : null,
      stats: c ? c.stats : null,
      lastSeq: c ? c.lastSeq.toString() : null,
      stored: c ? localStorage.getItem(`ringgate.last_seq.${c.deviceId}`) : null,
    };
  },
};

window.h = h;
