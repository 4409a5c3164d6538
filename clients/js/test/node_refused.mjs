// For tests/web_js.rs: a client whose every transport is refused must end
// in onState("failed") with a reason (not loop on connecting/down forever).
// Usage: node_refused.mjs BASE_URL
import { RinggateClient } from "../ringgate.js";

const [base] = process.argv.slice(2);
const c = new RinggateClient({
  url: base,
  token: "t",
  deviceId: "node-refused",
  backoff: { baseMs: 20, capMs: 50, jitter: 0 },
  attemptTimeoutMs: 2000,
  store: { load: () => 0n, save: () => {} },
  onState: (s, x) => {
    if (s === "failed") {
      console.log(`failed ${x.reason}`);
      // Pending sends are rejected right after this call: let them print.
      setTimeout(() => process.exit(0), 50);
    }
    if (s === "down") console.log("down");
  },
});
const pending = c.send("bob", "never sent");
pending.catch((e) => console.log(`send rejected: ${e.message}`));
c.start();
setTimeout(() => { console.log("timeout"); process.exit(1); }, 15000);
