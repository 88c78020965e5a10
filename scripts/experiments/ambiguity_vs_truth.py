"""Spearman correlation of dmue-serve's `ambiguity` with the true mixture's normalised entropy.

  python3 scripts/experiments/ambiguity_vs_truth.py DATASET SERVED.jsonl [SERVED.jsonl ...]

DATASET: a synthetic dataset (manifest.jsonl with each face's true mixture); SERVED: the output
of `dmue-serve --model M --no-detect predict DATASET/images/test --format jsonl`.
"""
import json
import math
import os
import sys


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


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
