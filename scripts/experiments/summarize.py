"""Markdown tables from scripts/experiments/run.sh's results.jsonl (stdout)."""
import json
import statistics as st
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1])]
acc = defaultdict(list)
for r in rows:
    acc[(r["experiment"], r["flip_rate"])].append(100 * r["accuracy"])


def ms(v):
    return f"{st.mean(v):.2f} ± {st.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


rates = sorted({r["flip_rate"] for r in rows if r["experiment"] in ("baseline", "dmue")})
print("### 1. Clean-test accuracy (%) against the share of flipped training labels\n")
print("| flip rate | baseline | DMUE | DMUE - baseline | seeds |")
print("|---|---|---|---|---|")
for rate in rates:
    b, d = acc.get(("baseline", rate), []), acc.get(("dmue", rate), [])
    if b and d:
        print(f"| {rate:.0%} | {ms(b)} | {ms(d)} | {st.mean(d) - st.mean(b):+.2f} | {len(d)} |")

ablations = [e for e in ("no-latent", "no-similarity-preserving", "no-confidence", "official-eq7") if any(k[0] == e for k in acc)]
if ablations:
    rate = next(k[1] for k in acc if k[0] == ablations[0])
    seeds = {r["seed"] for r in rows if r["experiment"] == ablations[0]}
    full = [100 * r["accuracy"] for r in rows if r["experiment"] == "dmue" and r["flip_rate"] == rate and r["seed"] in seeds]
    base = [100 * r["accuracy"] for r in rows if r["experiment"] == "baseline" and r["flip_rate"] == rate and r["seed"] in seeds]
    print(f"\n### 2. Components at {rate:.0%} flipped labels (seeds {sorted(seeds)})\n")
    print("| variant | latent distribution | similarity preserving | confidence | accuracy (%) |")
    print("|---|---|---|---|---|")
    print(f"| baseline | - | - | - | {ms(base)} |")
    for name, flags in [("no-latent", "off on on"), ("no-similarity-preserving", "on off on"), ("no-confidence", "on on off"),
                        ("official-eq7", "on on on")]:
        if (name, rate) in acc:
            print(f"| DMUE, {name} | {' | '.join(flags.split())} | {ms(acc[(name, rate)])} |")
    print(f"| DMUE (full) | on | on | on | {ms(full)} |")
    print("\n(official-eq7: Eq. 7 as the authors' code computes it, rows min-max scaled, the sample itself included.)")

an = [r for r in rows if r["analysis"]]
if an:
    print("\n### 3-4. Latent distributions and confidence against the truth\n")
    print("| run | flip rate | seed | KL(truth, latent) | KL(truth, softmax) | Spearman(alpha, entropy) | alpha clean | alpha flipped |")
    print("|---|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{v:.4f}"
    for r in an:
        a = r["analysis"]
        print(f"| {r['experiment']} | {r['flip_rate']:.0%} | {r['seed']} | {f(a['kl_latent_mean'])} | {f(a['kl_softmax_mean'])} | "
              f"{f(a['spearman_alpha_entropy'])} | {f(a['alpha_clean_mean'])} | {f(a['alpha_flipped_mean'])} |")

# Experiment 1 as a chart (SVG, written next to the results when a path is given).
if len(sys.argv) > 2:
    W, H, L, B, T, R = 560, 360, 60, 50, 30, 150
    ys = [v for k, v in acc.items() if k[0] in ("baseline", "dmue") for v in v]
    lo, hi = (min(ys) // 10) * 10, (max(ys) // 10 + 1) * 10
    X = lambda r: L + (W - L - R) * (r - rates[0]) / max(rates[-1] - rates[0], 1e-9)
    Y = lambda a: H - B - (H - B - T) * (a - lo) / (hi - lo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2 - 60}" y="18" font-size="14">Clean-test accuracy vs flipped training labels</text>']
    for g in range(int(lo), int(hi) + 1, 10):
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(g)}" y2="{Y(g)}" stroke="#ddd"/><text x="{L - 30}" y="{Y(g) + 4}">{g}%</text>')
    for r in rates:
        out.append(f'<text x="{X(r) - 10}" y="{H - B + 18}">{r:.0%}</text>')
    out.append(f'<text x="{(W - R) / 2}" y="{H - 12}">share of flipped training labels</text>')
    for k, (name, colour) in enumerate([("baseline", "#1f77b4"), ("dmue", "#d62728")]):
        pts = [(X(r), Y(st.mean(acc[(name, r)])), st.stdev(acc[(name, r)]) if len(acc[(name, r)]) > 1 else 0) for r in rates if (name, r) in acc]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(f"{x},{y}" for x, y, _ in pts)}"/>')
        for x, y, s in pts:
            dy = (H - B - T) * s / (hi - lo)
            out.append(f'<line x1="{x}" x2="{x}" y1="{y - dy}" y2="{y + dy}" stroke="{colour}"/><circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>')
        out.append(f'<rect x="{W - R + 15}" y="{T + 20 * k}" width="12" height="12" fill="{colour}"/><text x="{W - R + 32}" y="{T + 10 + 20 * k}">{"DMUE" if name == "dmue" else "baseline"} (mean ± std)</text>')
    out.append("</svg>")
    open(sys.argv[2], "w").write("\n".join(out))
