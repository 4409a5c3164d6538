#!/usr/bin/env python3
"""Rough idle-connection memory probe (issue 2's first measurement; the real
load generator is `ringgate-bench`, issue 4).

Opens N authenticated TLS connections to a running ringgate and reports the
server's RSS delta per connection:  (RSS after N - RSS after warm-up) / N.

  python3 bench/scripts/idle_probe.py --pid PID --addr 127.0.0.1:7443 \
      --secret SECRET -n 10000

Client connections are spread over loopback source addresses 127.0.0.2..
so ephemeral ports never run out; keep N under this process's open-file
limit (20,000 here) or run several probes.
"""
import argparse, asyncio, base64, hashlib, hmac, json, os, ssl, struct, time


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(secret, user, ttl=3600):
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps({"sub": user, "exp": int(time.time()) + ttl}).encode())
    s = b64(hmac.new(secret.encode(), h + b"." + p, hashlib.sha256).digest())
    return (h + b"." + p + b"." + s).decode()


def connect_frame(device, tok):
    d, t = device.encode(), tok.encode()
    body = struct.pack(">BBH", 0x01, 1, 0) + struct.pack(">H", len(d)) + d + struct.pack(">H", len(t)) + t + struct.pack(">Q", 0)
    return struct.pack(">I", len(body)) + body


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def one(i, args, ctx, conns):
    host, port = args.addr.rsplit(":", 1)
    src = f"127.0.0.{2 + i % 200}"
    r, w = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="localhost" if ctx else None, local_addr=(src, 0))
    w.write(connect_frame(f"d{i}", token(args.secret, f"idle{i}")))
    await w.drain()
    hdr = await r.readexactly(4)
    body = await r.readexactly(struct.unpack(">I", hdr)[0])
    assert body[0] == 0x02 and body[1] == 0, f"CONNACK status {body[1]}"
    conns.append((r, w))


async def ramp(args, ctx, start, count, conns):
    sem = asyncio.Semaphore(200)

    async def guarded(i):
        async with sem:
            await one(i, args, ctx, conns)

    await asyncio.gather(*(guarded(i) for i in range(start, start + count)))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--addr", default="127.0.0.1:7443")
    ap.add_argument("--secret", required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--plain", action="store_true", help="server runs with tls.enabled = false")
    args = ap.parse_args()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if args.plain:
        ctx = None
    conns = []
    await ramp(args, ctx, 0, args.warmup, conns)
    await asyncio.sleep(1.0)
    base = rss_kb(args.pid)
    t0 = time.time()
    await ramp(args, ctx, args.warmup, args.n, conns)
    dt = time.time() - t0
    await asyncio.sleep(2.0)
    after = rss_kb(args.pid)
    per = (after - base) * 1024 / args.n
    print(json.dumps({"n": args.n, "rss_base_kb": base, "rss_after_kb": after, "bytes_per_conn": round(per), "ramp_conn_per_s": round(args.n / dt)}))


if __name__ == "__main__":
    asyncio.run(main())
