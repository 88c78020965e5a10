"""Spearman correlation of dmue-serve's `ambiguity` with the true mixture's normalised entropy.

  python3 scripts/experiments/ambiguity_vs_truth.py DATASET SERVED.jsonl [SERVED.jsonl ...]

DATASET: a synthetic dataset (manifest.jsonl with each face's true mixture); SERVED: the output
of `dmue-serve --model M --no-detect predict DATASET/images/test --format jsonl`.
"""
import json
import math
import os
import sys

from rankstats import spearman


def entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0) / math.log(len(p))


dataset, served = sys.argv[1], sys.argv[2:]
truth = {}
for line in open(os.path.join(dataset, "manifest.jsonl")):
    r = json.loads(line)
    if r["split"] == "test":
        truth[os.path.normpath(os.path.join(dataset, r["path"]))] = entropy(r["truth"]["mixture"])
print("| model | images | Spearman(ambiguity, true entropy) | mean ambiguity |")
print("|---|---|---|---|")
for path in served:
    a, t = [], []
    for line in open(path):
        r = json.loads(line)
        if r.get("faces"):
            a.append(r["faces"][0]["ambiguity"])
            t.append(truth[os.path.normpath(r["image"])])
    print(f"| {path} | {len(a)} | {spearman(a, t):.3f} | {sum(a) / len(a):.3f} |")
