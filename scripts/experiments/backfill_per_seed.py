"""Fills `per_seed` of the summary entries whose run files are gone, from the per-seed tables
of docs/results.md, and tags them with the grid they came from.

    python3 scripts/experiments/backfill_per_seed.py docs/results-summary.json docs/results.md

An entry takes a table row naming the same arm with as many seeds whose mean equals the entry's mean
(to 0.01 points); each table sits under the section that names its regime, so a row matches one
entry only. Entries that already carry `per_seed` are left alone; entries no row matches are
listed and left without it.
"""
import json
import re
import statistics as st
import sys


def tables(md):
    """Every per-seed table row: (arm, [accuracies or None])."""
    rows = []
    for line in md.splitlines():
        if not line.startswith("| ") or "seed" in line or "---" in line:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        vals = cells[1:]
        if not vals or not all(re.fullmatch(r"-?\d+\.\d\d|-", v) for v in vals):
            continue
        rows.append((cells[0], [None if v == "-" else float(v) for v in vals]))
    return rows


def words(name):
    # The page's "DMUE, default" is the class-norm variant (the default of those grids).
    name = name.lower().replace("default", "class-norm")
    return set(re.findall(r"[a-z0-9]+", name)) - {"dmue"}


def same_arm(arm, row_name):
    """The page names arms in words ('DMUE, default (class-norm)', 'GCE (q 0.7)'): an arm
    matches a row whose words include all of the arm's (less 'dmue')."""
    return words(arm) <= words(row_name)


def main():
    summary_path, md_path = sys.argv[1:3]
    summary = json.load(open(summary_path))
    rows = tables(open(md_path).read())
    missing = []
    for e in summary["entries"]:
        e.setdefault("grid", "before-peers")
        if "per_seed" in e:
            continue
        if e["n"] == 1:
            e["per_seed"] = [e["mean"]]
            continue
        for arm, vals in rows:
            got = [v for v in vals if v is not None]
            if same_arm(e["arm"], arm) and len(got) == e["n"] and abs(st.mean(got) - e["mean"]) < 0.01:
                e["per_seed"] = got
                break
        else:
            missing.append(f"{e['regime']} {e['flip_rate']} {e['arm']}")
    for key in ("regime_effects", "vs_best_single", "flip_auroc"):
        for x in summary.get(key, []):
            x.setdefault("grid", "before-peers")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    print(f"per_seed filled for {sum('per_seed' in e for e in summary['entries'])} of "
          f"{len(summary['entries'])} entries")
    for m in missing:
        print(f"  no per-seed table row for {m}")


if __name__ == "__main__":
    main()
