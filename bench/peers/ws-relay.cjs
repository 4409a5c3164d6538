// The WebSocket peer of ringgate-bench: what a user might run instead of
// ringgate for browser push — Node with the `ws` package (Debian `node-ws`,
// installed by bench/setup-peers.sh) behind TLS, relaying frames between
// sockets. It speaks the subset of ringgate's PROTOCOL.md the idle and push
// scenarios use, one binary WebSocket message per frame, so the same load
// generator drives it:
//   CONNECT → CONNACK 0 (HS256 JWT checked, `sub` = user), SEND → PUSH to
//   every socket of the target user (per-user seq) then SENDACK 0,
//   PING → PONG; PUSHACK is read and dropped.
// What it does NOT do, and ringgate does: keep an inbox (a message to an
// offline user is dropped), retransmit unacked PUSHes, replay on reconnect,
// dedup retried SENDs, heartbeat/idle close, origin checks. So its figures
// are a floor for a relay, not a like-for-like IM server.
//
// Usage: node ws-relay.cjs PORT CERT KEY JWT_SECRET   (prints "listening PORT")
"use strict";
const https = require("https");
const fs = require("fs");
const crypto = require("crypto");
const { WebSocketServer } = require("ws");

const [port, certFile, keyFile, secret] = process.argv.slice(2);
const users = new Map(); // user → {seq, socks: Set}
let msgId = 0n;

function str(b, o) {
  const n = b.readUInt16BE(o);
  return [b.toString("utf8", o + 2, o + 2 + n), o + 2 + n];
}
function frame(type, body) {
  const h = Buffer.allocUnsafe(5);
  h.writeUInt32BE(body.length + 1, 0);
  h[4] = type;
  return Buffer.concat([h, body]);
}
function u64(v) { const b = Buffer.allocUnsafe(8); b.writeBigUInt64BE(BigInt(v)); return b; }
function s16(s) { const b = Buffer.from(s, "utf8"); const h = Buffer.allocUnsafe(2); h.writeUInt16BE(b.length); return Buffer.concat([h, b]); }

/** `sub` of an HS256 JWT signed with our secret, or null. */
function verify(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const mac = crypto.createHmac("sha256", secret).update(parts[0] + "." + parts[1]).digest("base64url");
  if (mac !== parts[2]) return null;
  try {
    const p = JSON.parse(Buffer.from(parts[1], "base64url").toString());
    if (typeof p.exp === "number" && p.exp * 1000 < Date.now()) return null;
    return typeof p.sub === "string" ? p.sub : null;
  } catch (_) { return null; }
}

const server = https.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), minVersion: "TLSv1.3" });
const wss = new WebSocketServer({ server, path: "/v1/ws", perMessageDeflate: false, maxPayload: 65540, handleProtocols: (p) => (p.has("ringgate.v1") ? "ringgate.v1" : false) });

wss.on("connection", (ws) => {
  let user = null;
  ws.on("message", (b, isBinary) => {
    if (!isBinary || b.length < 5 || b.readUInt32BE(0) + 4 !== b.length) { ws.close(4001); return; }
    const type = b[4];
    if (user === null) {
      if (type !== 1) { ws.close(4001); return; }
      let o = 5 + 1 + 2;
      let device, token;
      [device, o] = str(b, o);
      [token, o] = str(b, o);
      const sub = verify(token);
      const status = sub ? 0 : 2;
      ws.send(frame(2, Buffer.concat([Buffer.of(status), s16(sub || ""), Buffer.of(0x0e, 0x10), Buffer.of(0, 1, 0, 0), u64(1), u64(0), u64(Date.now())])));
      if (!sub) { ws.close(4002); return; }
      user = sub;
      let u = users.get(user);
      if (!u) { u = { seq: 0n, socks: new Set() }; users.set(user, u); }
      u.socks.add(ws);
      return;
    }
    if (type === 3) {
      const cid = b.subarray(5, 13);
      const [target, o] = str(b, 14);
      const payload = b.subarray(o);
      const now = u64(Date.now());
      const id = u64(++msgId);
      let t = users.get(target);
      if (!t) { t = { seq: 0n, socks: new Set() }; users.set(target, t); }
      t.seq += 1n;
      const push = frame(5, Buffer.concat([u64(t.seq), id, now, s16(user), Buffer.of(0), payload]));
      for (const s of t.socks) s.send(push);
      ws.send(frame(4, Buffer.concat([cid, Buffer.of(0), id, now])));
    } else if (type === 7) {
      ws.send(frame(8, b.subarray(5, 13)));
    } else if (type === 9) {
      ws.close(1000);
    }
    // 6 PUSHACK: nothing is retransmitted, so nothing to cancel.
  });
  ws.on("close", () => { if (user !== null) users.get(user)?.socks.delete(ws); });
  ws.on("error", () => {});
});

server.listen(Number(port), "127.0.0.1", () => console.log(`listening ${port}`));
