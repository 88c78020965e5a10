"""Fails when a figure quoted in the docs disagrees with docs/results-summary.json.

A quoted table row ends with an HTML comment (an extra cell, which renderers drop) that says
which figures of the summary it quotes, in order:

    | from scratch ... | 56.70 | 52.51 | ... | <!-- figures: mean peers scratch dmue-gce-target 6-10; mean peers scratch gce 6-10; vs peers scratch 6-10 -->

A comment alone on a line quotes the text above it, back to a blank line or to the start of
its list item.

Each item yields numbers, in order:
- `mean GRID REGIME ARM SEEDS`: the arm's mean accuracy (%) over those seeds: the entry's own
  mean when they are its seeds, else the mean of its per-seed values (flip rate 0.3 unless
  `@RATE` follows the regime, as `scratch@0.1`);
- `std GRID REGIME ARM SEEDS`: their sample standard deviation;
- `vs GRID REGIME SEEDS`: the default arm minus the best single arm, and its 95 % interval
  (three numbers), from `vs_best_single`;
- `diff GRID REGIME ARM SEEDS`: the arm's paired difference to the baseline and its interval
  (three numbers; one with one seed), from the entry of exactly those seeds;
- `recall GRID REGIME ARM SEEDS`: the lowest per-class recall (%) of any of the entry's runs;
- `pdiff GRID REGIME ARM OTHER SEEDS`: the arm minus OTHER, paired over those seeds, and its
  interval, computed from both arms' per-seed values (summarize.py's own formula); OTHER may
  be `ARM@GRID`, the arm as another grid recorded it (its runs, same data seeds), or
  `ARM@GRID@RATE`, that grid's arm at another flip rate (GRID empty: this grid);
- `effect GRID REGIME REFERENCE ARM`: the arm in REGIME minus the same arm in REFERENCE,
  paired over their common seeds, and its interval, from `regime_effects`;
- `auroc GRID REGIME ARM SCORE`: the arm's mean AUROC for flipped labels of SCORE (`alpha` or
  `p(label)`) over the entry's seeds, from `flip_auroc`;
- `skip`: a number of the row that is not checked (a count, a minimum over runs).
The decimal numbers of the row (those with a decimal point) must equal them, rounded to the
row's own decimals. SEEDS is `A-B` or a comma list. Run by scripts/test.sh.

    python3 scripts/check-figures.py [FILE.md ...]   # default: README.md docs/*.md
"""
import glob
import json
import os
import re
import statistics as st
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "experiments"))
from summarize import mean_ci95  # noqa: E402  (one formula for every interval)

SUMMARY = "docs/results-summary.json"
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+\.\d+")


def seeds_of(text):
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def regime_rate(text):
    regime, _, rate = text.partition("@")
    return regime, float(rate) if rate else 0.3


def entry(summary, grid, regime, arm, seeds=None):
    regime, rate = regime_rate(regime)
    found = [e for e in summary["entries"]
             if e.get("grid") == grid and e["regime"] == regime and e["arm"] == arm
             and abs(e["flip_rate"] - rate) < 1e-9
             and (seeds is None or e["seeds"] == seeds)]
    if not found:
        raise KeyError(f"no entry grid={grid} regime={regime} rate={rate} arm={arm}"
                       + (f" seeds={seeds}" if seeds else ""))
    return max(found, key=lambda e: len(e["seeds"]))


def per_seed(summary, grid, regime, arm, seeds):
    e = entry(summary, grid, regime, arm)
    if not e.get("per_seed"):
        raise KeyError(f"{grid} {regime} {arm}: no per_seed values")
    by_seed = dict(zip(e["seeds"], e["per_seed"]))
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise KeyError(f"{grid} {regime} {arm}: no seeds {missing}")
    return [by_seed[s] for s in seeds]


def values(summary, item):
    kind, *args = item.split()
    if kind in ("mean", "std"):
        grid, regime, arm, seeds = args
        try:
            # The entry of exactly these seeds: its own figures, from unrounded accuracies.
            return [entry(summary, grid, regime, arm, seeds_of(seeds))[kind]]
        except KeyError:
            pass
        xs = per_seed(summary, grid, regime, arm, seeds_of(seeds))
        return [st.mean(xs) if kind == "mean" else st.stdev(xs)]
    if kind == "vs":
        grid, regime, seeds = args
        regime, rate = regime_rate(regime)
        s = seeds_of(seeds)
        for v in summary["vs_best_single"]:
            if (v.get("grid") == grid and v["regime"] == regime and v["seeds"] == s
                    and abs(v["flip_rate"] - rate) < 1e-9):
                return [v["diff"], v["ci95_low"], v["ci95_high"]]
        raise KeyError(f"no vs_best_single grid={grid} regime={regime} seeds={s}")
    if kind == "effect":
        grid, regime, reference, arm = args
        for v in summary["regime_effects"]:
            if (v.get("grid") == grid and v["regime"] == regime
                    and v["reference"] == reference and v["arm"] == arm):
                return [v["diff"], v["ci95_low"], v["ci95_high"]]
        raise KeyError(f"no regime effect grid={grid} {regime} - {reference} arm={arm}")
    if kind == "auroc":
        grid, regime, arm, score = args
        regime, rate = regime_rate(regime)
        for v in summary["flip_auroc"]:
            if (v.get("grid") == grid and v["regime"] == regime and v["arm"] == arm
                    and v["score"] == score and abs(v["flip_rate"] - rate) < 1e-9):
                return [v["auroc"]]
        raise KeyError(f"no flip_auroc grid={grid} regime={regime} arm={arm} score={score}")
    if kind == "skip":
        return [None]
    if kind == "pdiff":
        grid, regime, arm, other, seeds = args
        a = per_seed(summary, grid, regime, arm, seeds_of(seeds))
        other, _, where = other.partition("@")
        other_grid, _, other_rate = where.partition("@")
        other_regime = regime_rate(regime)[0] + ("@" + other_rate if other_rate else "")
        b = per_seed(summary, other_grid or grid, other_regime if other_rate else regime, other,
                     seeds_of(seeds))
        return list(mean_ci95([x - y for x, y in zip(a, b)]))
    if kind == "diff":
        grid, regime, arm, seeds = args
        e = entry(summary, grid, regime, arm, seeds_of(seeds))
        if e["ci95_low"] is None:  # one seed: no interval
            return [e["paired_diff"]]
        return [e["paired_diff"], e["ci95_low"], e["ci95_high"]]
    if kind == "recall":
        grid, regime, arm, seeds = args
        return [100 * entry(summary, grid, regime, arm, seeds_of(seeds))["min_class_recall"]]
    raise ValueError(f"unknown figure kind '{kind}'")


def check(path, summary):
    errors, checked = [], 0
    lines = open(path).read().split("\n")
    for i, line in enumerate(lines):
        m = re.search(r"<!-- figures: (.*?) -->", line)
        if not m:
            continue
        row = line[: m.start()]
        if not row.strip():
            above = []
            for j in range(i - 1, -1, -1):
                if not lines[j].strip():
                    break
                above.insert(0, lines[j])
                if lines[j].lstrip().startswith(("- ", "* ", "|")):
                    break
            row = " ".join(above)
        try:
            want = [x for item in m.group(1).split(";") for x in values(summary, item.strip())]
        except (KeyError, ValueError) as e:
            errors.append(f"{path}:{i + 1}: {e}")
            continue
        got = NUMBER.findall(row)
        if len(got) != len(want):
            errors.append(f"{path}:{i}: the row has {len(got)} decimal numbers, the comment "
                          f"names {len(want)}: {row.strip()}")
            continue
        for text, value in zip(got, want):
            if value is None:
                continue
            decimals = len(text.split(".")[1])
            if round(float(text), decimals) != round(value, decimals):
                errors.append(f"{path}:{i}: {text} quoted, {value:.{decimals}f} in {SUMMARY}: "
                              f"{row.strip()}")
        checked += 1
    return errors, checked


def main():
    files = sys.argv[1:] or ["README.md"] + sorted(glob.glob("docs/*.md"))
    summary = json.load(open(SUMMARY))
    errors, rows = [], 0
    for f in files:
        e, n = check(f, summary)
        errors += e
        rows += n
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        sys.exit(f"check-figures: {len(errors)} figure(s) disagree with {SUMMARY}")
    print(f"check-figures: {rows} quoted rows agree with {SUMMARY}")


if __name__ == "__main__":
    main()
