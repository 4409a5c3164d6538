import json,glob,sys,collections
rows=collections.OrderedDict()
runs=sorted(glob.glob('/tmp/ab/*-[0-9]/suite-*.json'))
names=[]
latest={}
for f in runs: latest[f.split('/')[3]]=f
runs=[latest[n] for n in sorted(latest, key=lambda n:(n.split('-')[1], n))]
for f in runs:
    name=f.split('/')[3]; names.append(name)
    d=json.load(open(f))
    def put(k,v): rows.setdefault(k,{})[name]=v
    for i in d['idle']: put(f"idle {i['target']} {i['conns']} RSS B/conn", i['rss_bytes_per_conn'])
    for h in d['handshake']: put(f"handshake {h['target']} {h['mode']} µs/hs", h['server_cpu_us_per_handshake'])
    fr=d['opts']['load_fractions']; seen=collections.Counter()
    for p in d['push']:
        if p['mode']=='open-loop':
            k=f"push {p['target']} open-loop {int(p['offered_per_s']):,}/s"
        else:
            k=f"push {p['target']} saturation"
        put(k+" µs/msg", p['server_cpu_us_per_msg'])
        if p['mode']!='open-loop': put(k+" msg/s", p['msgs_per_s'])
        lat=p['latency_us'] or {}
        put(k+" p50 ms", (lat.get('p50_us') or 0)/1000)
        put(k+" p99 ms", (lat.get('p99_us') or 0)/1000)
    for s in d['storm']: put(f"storm {s['target']} µs/reconnect", s['server_cpu_us_per_reconnect'])
order=[n for n in names]
print("| figure | "+" | ".join(order)+" | base median | new median | new/base |")
print("|---"*(len(order)+4)+"|")
import statistics
for k,v in rows.items():
    b=[v[n] for n in order if n.startswith('base') and v.get(n) is not None]
    nn=[v[n] for n in order if n.startswith('new') and v.get(n) is not None]
    if not b or not nn: continue
    mb,mn=statistics.median(b),statistics.median(nn)
    fmt=lambda x: f"{x:,.2f}" if isinstance(x,float) and x<100 else f"{x:,.0f}"
    print(f"| {k} | "+" | ".join(fmt(v[n]) if v.get(n) is not None else '–' for n in order)+f" | {fmt(mb)} | {fmt(mn)} | {mn/mb if mb else 0:.2f} |")
