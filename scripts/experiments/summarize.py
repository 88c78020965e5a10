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

ablations = [e for e in ("no-latent", "no-similarity-preserving", "no-confidence") if any(k[0] == e for k in acc)]
if ablations:
    rate = next(k[1] for k in acc if k[0] == ablations[0])
    seeds = {r["seed"] for r in rows if r["experiment"] == ablations[0]}
    full = [100 * r["accuracy"] for r in rows if r["experiment"] == "dmue" and r["flip_rate"] == rate and r["seed"] in seeds]
    base = [100 * r["accuracy"] for r in rows if r["experiment"] == "baseline" and r["flip_rate"] == rate and r["seed"] in seeds]
    print(f"\n### 2. Components at {rate:.0%} flipped labels (seeds {sorted(seeds)})\n")
    print("| variant | latent distribution | similarity preserving | confidence | accuracy (%) |")
    print("|---|---|---|---|---|")
    print(f"| baseline | - | - | - | {ms(base)} |")
    for name, flags in [("no-latent", "off on on"), ("no-similarity-preserving", "on off on"), ("no-confidence", "on on off")]:
        if (name, rate) in acc:
            print(f"| DMUE, {name} | {' | '.join(flags.split())} | {ms(acc[(name, rate)])} |")
    print(f"| DMUE (full) | on | on | on | {ms(full)} |")

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
