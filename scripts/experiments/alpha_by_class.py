"""Mean confidence alpha per annotated class against test recall per class, for DMUE runs.

    python3 scripts/experiments/alpha_by_class.py runs/exp9/dmue-paper/r0.3-s1 [RUN ...]

Reads RUN/analysis-samples.jsonl (`dmue-train analyze`) and RUN/eval-test.json; prints one
markdown row per run and class, and the Spearman correlation (over the classes of all runs
given) between a class's mean alpha and its recall. The diagnosis: the trained
uncertainty module turns whole classes down, and those classes are never predicted.
"""
import json
import statistics as st
import sys

from rankstats import spearman

alphas, recalls = [], []
print("| run | " + " | ".join(["class", "mean alpha", "test recall %"]) + " |")
print("|---|---|---|---|")
for run in sys.argv[1:]:
    rows = [json.loads(line) for line in open(f"{run}/analysis-samples.jsonl")]
    ev = json.load(open(f"{run}/eval-test.json"))
    for c, name in enumerate(ev["classes"]):
        a = st.mean(r["alpha"] for r in rows if r["label"] == c)
        alphas.append(a)
        recalls.append(ev["per_class_recall"][c])
        print(f"| {run} | {name} | {a:.3f} | {100 * ev['per_class_recall'][c]:.1f} |")
if len(set(alphas)) > 1:
    print(f"\nSpearman(mean alpha of a class, its recall) over {len(alphas)} run-classes: "
          f"{spearman(alphas, recalls):.3f}")
