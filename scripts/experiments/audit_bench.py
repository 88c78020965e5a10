#!/usr/bin/env python3
"""The label-audit benchmark helpers (called by scripts/experiments/audit-bench.sh).

  folds DATA OUT K SEED      write K stratified fold datasets of DATA's training split under OUT
                             (fold k's held-out rows become its `val` split; images symlinked)
  cleanlab OUT K             gather the K folds' out-of-sample probabilities (OUT/f*/val.jsonl),
                             run cleanlab, write OUT/cleanlab.jsonl (path, score, issue)
  score DATA SCORES NAME SECONDS
                             AUROC and precision@k of SCORES (jsonl with path and score, high =
                             suspicious) against DATA's recorded flips; prints one JSON line
  candidates AUDIT_JSON ARM  every candidate score's AUROC/precision@k from one audit.json
  table RESULTS [--json F]   the side-by-side table (mean +- std over seeds per rate and method)
  retrain BEFORE AFTER RATE RELABELLED
                             accuracy before and after relabelling, paired by seed

Detecting flips: an image counts as flipped when the manifest records it (`truth.flipped`, or an
`original_label` from `prepare --flip-rate`); precision@k uses k = the number of flips.
"""
import json
import os
import random
import statistics
import sys


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def flipped(row):
    t = row.get("truth") or {}
    return bool(t.get("flipped")) or row.get("original_label") is not None


def folds(data, out, k, seed):
    rows = read_jsonl(os.path.join(data, "manifest.jsonl"))
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    rng = random.Random(seed)
    fold_of = {}
    # Stratified by the annotated label, like scikit-learn's StratifiedKFold that cleanlab uses.
    for c in sorted({rows[i]["label"] for i in train}):
        members = [i for i in train if rows[i]["label"] == c]
        rng.shuffle(members)
        for j, i in enumerate(members):
            fold_of[i] = j % k
    images = os.path.abspath(os.path.join(data, "images"))
    for f in range(k):
        d = os.path.join(out, f"f{f}", "data")
        os.makedirs(d, exist_ok=True)
        link = os.path.join(d, "images")
        if not os.path.islink(link):
            os.symlink(images, link)
        with open(os.path.join(data, "dataset.json")) as src:
            info = src.read()
        with open(os.path.join(d, "dataset.json"), "w") as dst:
            dst.write(info)
        fold_rows = []
        for i in train:
            r = dict(rows[i])
            r["split"] = "val" if fold_of[i] == f else "train"
            fold_rows.append(r)
        write_jsonl(os.path.join(d, "manifest.jsonl"), fold_rows)


def cleanlab_scores(out, k):
    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    preds = []
    for f in range(k):
        preds += read_jsonl(os.path.join(out, f"f{f}", "val.jsonl"))
    preds.sort(key=lambda r: r["path"])
    labels = np.array([r["label"] for r in preds])
    probs = np.array([r["probabilities"] for r in preds], dtype=np.float64)
    probs /= probs.sum(1, keepdims=True)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    issues = find_label_issues(labels, probs)  # cleanlab's default: prune_by_noise_rate
    rows = [
        {"path": r["path"], "score": float(1.0 - q), "issue": bool(i)}
        for r, q, i in zip(preds, quality, issues)
    ]
    write_jsonl(os.path.join(out, "cleanlab.jsonl"), rows)
    print(f"cleanlab: {int(issues.sum())} label issues of {len(rows)} images")


def auroc(pos, neg):
    """P(score of a flipped image > score of a clean one), ties half (Mann-Whitney U)."""
    allv = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    ranks, i = {}, 0
    rank_sum = 0.0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1][0] == allv[i][0]:
            j += 1
        mean = (i + j) / 2 + 1
        rank_sum += mean * sum(1 for x in allv[i : j + 1] if x[1] == 1)
        i = j + 1
    n1, n0 = len(pos), len(neg)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def score(data, scores, name, seconds):
    truth = {
        r["path"]: flipped(r)
        for r in read_jsonl(os.path.join(data, "manifest.jsonl"))
        if r["split"] == "train"
    }
    rows = read_jsonl(scores)
    if len(rows) != len(truth) or any(r["path"] not in truth for r in rows):
        sys.exit(f"{scores}: {len(rows)} rows do not match the {len(truth)} training images")
    pos = [r["score"] for r in rows if truth[r["path"]]]
    neg = [r["score"] for r in rows if not truth[r["path"]]]
    k = len(pos)
    top = sorted(rows, key=lambda r: -r["score"])[:k]
    out = {
        "method": name,
        "auroc": auroc(pos, neg),
        "precision_at_k": sum(truth[r["path"]] for r in top) / k,
        "k": k,
        "images": len(rows),
        "seconds": float(seconds),
    }
    flagged = [r for r in rows if r.get("issue")]
    if flagged:
        out["flagged"] = len(flagged)
        out["flagged_precision"] = sum(truth[r["path"]] for r in flagged) / len(flagged)
    print(json.dumps(out))


def table(results, json_out=None):
    rows = read_jsonl(results)
    # The last line of each (method, rate, seed) wins (a rerun replaces an earlier result).
    latest = {(r["method"], r["flip_rate"], r["seed"]): r for r in rows}
    groups = {}
    for (m, rate, _), r in sorted(latest.items()):
        groups.setdefault((rate, m), []).append(r)

    def ms(xs):
        return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)

    summary = {}
    print("| flips | method | seeds | AUROC | precision@k | seconds |")
    print("|---|---|---|---|---|---|")
    for (rate, m), rs in sorted(groups.items()):
        a, p, s = (ms([r[key] for r in rs]) for key in ("auroc", "precision_at_k", "seconds"))
        print(
            f"| {round(100 * rate)} % | {m} | {len(rs)} | {a[0]:.4f} +- {a[1]:.4f} "
            f"| {p[0]:.4f} +- {p[1]:.4f} | {s[0]:.0f} |"
        )
        summary.setdefault(f"{rate:g}", {})[m] = {
            "auroc": round(a[0], 4),
            "auroc_std": round(a[1], 4),
            "precision_at_k": round(p[0], 4),
            "precision_at_k_std": round(p[1], 4),
            "seconds": round(s[0], 1),
            "n_seeds": len(rs),
        }
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"flip_rates": summary}, f, indent=2)
            f.write("\n")


def candidates(audit_json, arm):
    a = json.load(open(audit_json))
    for d in a["detection"]:
        print(json.dumps({"method": f"{arm}:{d['score']}", "auroc": d["auroc"],
                          "precision_at_k": d["precision_at_k"], "seconds": 0.0}))


def retrain(before, after, rate, relabelled):
    """Paired by seed: accuracy of each arm on the original labels and after relabelling."""
    from summarize import mean_ci95

    def load(path):
        return {(r["arm"], r["seed"]): r for r in read_jsonl(path)
                if abs(r["flip_rate"] - float(rate)) < 1e-9}

    b, a = load(before), load(after)
    print("| arm | seed | labels fixed | labels broken | original | relabelled | difference |")
    print("|---|---|---|---|---|---|---|")
    for arm in ("baseline", "dmue-class-norm"):
        diffs = []
        for (arm2, seed), r in sorted(a.items()):
            if arm2 != arm or (arm, seed) not in b:
                continue
            fixed = broken = 0
            for row in read_jsonl(os.path.join(relabelled, f"r{rate}-s{seed}", "manifest.jsonl")):
                if row.get("relabelled_from") is None:
                    continue
                truth = row.get("truth") or {}
                right = truth.get("clean_label", row.get("original_label"))
                was = row["relabelled_from"]
                fixed += row["label"] == right and was != right
                broken += was == right and row["label"] != right
            d = 100 * (r["accuracy"] - b[(arm, seed)]["accuracy"])
            diffs.append(d)
            print(f"| {arm} | {seed} | {fixed} | {broken} | {100 * b[(arm, seed)]['accuracy']:.2f} "
                  f"| {100 * r['accuracy']:.2f} | {d:+.2f} |")
        if len(diffs) > 1:
            m, low, high = mean_ci95(diffs)
            print(f"| {arm} | mean | | | | | {m:+.2f} (95 % interval {low:+.2f} to {high:+.2f}) |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "folds":
        folds(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "cleanlab":
        cleanlab_scores(args[0], int(args[1]))
    elif cmd == "score":
        score(*args)
    elif cmd == "candidates":
        candidates(args[0], args[1])
    elif cmd == "retrain":
        retrain(*args)
    elif cmd == "table":
        table(args[0], args[2] if len(args) > 2 and args[1] == "--json" else None)
    else:
        sys.exit(__doc__)
