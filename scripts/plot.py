#!/usr/bin/env python3
"""Writes docs/bench-connections.svg (events/s and CPU-s per million events vs connections)
from target/bench/results.jsonl, using the newest record of each conns-N scenario.
No plotting library needed: the SVG is written by hand."""
import json, pathlib, sys

root = pathlib.Path(__file__).resolve().parent.parent
records = {}
for line in (root / "target/bench/results.jsonl").read_text().splitlines():
    r = json.loads(line)
    if r["scenario"].startswith("conns-"):
        records[r["connections"]] = r
if not records:
    sys.exit("no conns-N records: run scripts/bench.sh conns first")
points = sorted(records.items())
W, H, L, B = 640, 360, 70, 50
xmax = len(points) - 1 or 1
ymax = max(r["delivered_per_s"] for _, r in points) * 1.15
def x(i): return L + i * (W - L - 30) / xmax
def y(v): return H - B - v * (H - B - 30) / ymax
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="18" text-anchor="middle" font-size="14">kube-audit-relay: delivered events/s vs connections (durable queue, HTTPS+mTLS in, TLS out)</text>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="{H-B}" x2="{L}" y2="20" stroke="black"/>']
for k in range(0, 6):
    v = ymax * k / 5
    svg.append(f'<text x="{L-6}" y="{y(v)+4}" text-anchor="end">{v/1000:.0f}k</text>')
    svg.append(f'<line x1="{L}" y1="{y(v)}" x2="{W-20}" y2="{y(v)}" stroke="#ddd"/>')
path = " ".join(f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(r['delivered_per_s']):.1f}" for i, (_, r) in enumerate(points))
svg.append(f'<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
for i, (c, r) in enumerate(points):
    svg.append(f'<circle cx="{x(i):.1f}" cy="{y(r["delivered_per_s"]):.1f}" r="4" fill="#1f77b4"/>')
    svg.append(f'<text x="{x(i):.1f}" y="{H-B+18}" text-anchor="middle">{c}</text>')
    svg.append(f'<text x="{x(i):.1f}" y="{y(r["delivered_per_s"])-10:.1f}" text-anchor="middle">{r["delivered_per_s"]/1000:.0f}k · {r["cpu_s_per_million"]} CPU-s/M</text>')
svg.append(f'<text x="{W/2}" y="{H-12}" text-anchor="middle">connections (100-event batches of ~700 B, 2 vCPU shared with load generator and sink)</text>')
svg.append("</svg>")
out = root / "docs/bench-connections.svg"
out.parent.mkdir(exist_ok=True)
out.write_text("\n".join(svg) + "\n")
print(out)
