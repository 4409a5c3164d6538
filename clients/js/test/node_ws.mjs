// Drives ringgate.js over WebSocket from Node (`node --experimental-websocket`),
// for tests/web_js.rs: receives what the native peer sent (replayed and
// live), sends one message back, prints one line per event.
// Usage: node_ws.mjs BASE_URL TOKEN PEER
import { RinggateClient } from "../ringgate.js";

const [base, token, peer] = process.argv.slice(2);
const seen = [];
const c = new RinggateClient({
  url: base,
  token,
  deviceId: "node-1",
  onState: (s, x) => console.log(`state ${s}${x && x.status !== undefined ? " " + x.status : ""}`),
  onMessage: async (m) => {
    const text = new TextDecoder().decode(m.payload);
    console.log(`push ${m.seq} ${m.from} ${text}`);
    seen.push(text);
    if (text === "live") {
      const ack = await c.send(peer, "from js");
      console.log(`sendack ${ack.status}`);
      c.close();
      setTimeout(() => process.exit(0), 100);
    }
  },
});
c.start();
setTimeout(() => { console.log("timeout"); process.exit(1); }, 15000);
