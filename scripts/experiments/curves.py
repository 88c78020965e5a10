"""Per-epoch learning curves of a paired grid, averaged over seeds.

    python3 scripts/experiments/curves.py runs/exp9e24 [--rate 0.3] [--arms baseline dmue-class-norm]

Reads OUT/ARM/rRATE-sSEED/metrics.jsonl of scripts/experiments/run.sh's runs and prints, for each
epoch, the mean clean-test accuracy of each arm (the trainer evaluates on the test split every
epoch; the reported figure is always the last epoch's, so these curves are a diagnosis, never a
model selection), the mean training accuracy against the *noisy* labels, and the paired
difference of the second arm to the first over the seeds both have. Memorisation shows as the
training accuracy climbing while the test accuracy falls. Then, from each run's final model on
its training split (`analysis-samples.jsonl`, written by `dmue-train analyze`): the share of
flipped samples predicted as their wrong label, the direct measure of memorisation.
"""
import argparse
import json
import statistics as st
from pathlib import Path

from summarize import mean_ci95


def curves(out, arm, rate):
    runs = {}
    for d in sorted(Path(out, arm).glob(f"r{rate}-s*")):
        m = d / "metrics.jsonl"
        if d.is_dir() and (d / "summary.json").exists() and m.exists():
            rows = [json.loads(line) for line in open(m) if line.strip()]
            runs[int(d.name.split("-s")[-1])] = rows
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rate", default="0.3")
    ap.add_argument("--arms", nargs="+", default=["baseline", "dmue-class-norm"])
    a = ap.parse_args()
    by_arm = {arm: curves(a.out, arm, a.rate) for arm in a.arms}
    seeds = sorted(set.intersection(*(set(r) for r in by_arm.values())))
    if not seeds:
        raise SystemExit(f"no seed has finished every arm of {a.arms} under {a.out}")
    epochs = min(len(by_arm[arm][s]) for arm in a.arms for s in seeds)
    ref, other = a.arms[0], a.arms[-1]
    head = " | ".join(f"{arm} test | {arm} train (noisy)" for arm in a.arms)
    print(f"Seeds {seeds}, flip rate {a.rate}; accuracy % (means over seeds)\n")
    print(f"| epoch | {head} | {other} - {ref} (95 % interval) |")
    print("|---" * (2 + 2 * len(a.arms)) + "|")
    for e in range(epochs):
        cells = []
        for arm in a.arms:
            cells.append(f"{100 * st.mean(by_arm[arm][s][e]['eval_accuracy'] for s in seeds):.2f}")
            cells.append(f"{100 * st.mean(by_arm[arm][s][e]['train_accuracy'] for s in seeds):.2f}")
        m, low, high = mean_ci95(
            [100 * (by_arm[other][s][e]["eval_accuracy"] - by_arm[ref][s][e]["eval_accuracy"])
             for s in seeds])
        diff = f"{m:+.2f}" if low is None else f"{m:+.2f} ({low:+.2f} to {high:+.2f})"
        print(f"| {e + 1} | {' | '.join(cells)} | {diff} |")
    print("\nFinal models on their training split, means over the seeds (%):\n")
    print("| arm | flipped samples predicted as their wrong label | clean samples predicted as their label |")
    print("|---|---|---|")
    for arm in a.arms:
        fit = [fitted(Path(a.out, arm, f"r{a.rate}-s{s}")) for s in seeds]
        if all(f is not None for f in fit):
            print(f"| {arm} | {st.mean(f[0] for f in fit):.2f} | {st.mean(f[1] for f in fit):.2f} |")


def fitted(run):
    """(% of flipped samples whose prediction is their annotated, wrong, label; % of clean samples
    predicted as their label) for one run, or None without an analysis."""
    path = run / "analysis-samples.jsonl"
    if not path.exists():
        return None
    hits = {True: [], False: []}
    for line in open(path):
        r = json.loads(line)
        p = r["softmax"]
        hits[r["flipped"]].append(max(range(len(p)), key=p.__getitem__) == r["label"])
    return tuple(100 * sum(h) / max(len(h), 1) for h in (hits[True], hits[False]))


if __name__ == "__main__":
    main()
