"""Paired summary of scripts/experiments/run.sh's results.jsonl.

    python3 scripts/experiments/summarize.py runs/exp9/results.jsonl [MORE.jsonl ...] \
        [--json docs/results-summary.json] [--default-arm dmue-class-norm] [--seed-sets 1-5 6-10] \
        [--grid NAME --keep docs/results-summary.json] [--only-seeds 6-10] [--start-default face]

Prints markdown tables (stdout). For every regime x flip rate x arm: mean and sample std of the
clean-test accuracy over seeds, and the paired difference to the baseline of the same seeds
with a 95 % confidence interval (Student t over the seeds' differences), the smallest per-class
recall of any run (an arm that never predicts a class is broken), and, for DMUE arms, the
analysis (KL to the true mixtures, Spearman of alpha with ambiguity, AUROC of alpha for flips).
With several files (for instance the scratch and the pretrained grids), also the paired effect
of the regime on each arm (same seeds, same data). With --json the same figures go to a file a
program can check, with every arm's accuracy per seed (`per_seed`, in the order of `seeds`),
the default arm against the best single-network arm (`vs_best_single`: per regime, flip rate
and seed set, the best of SINGLE_ARMS by its mean on those seeds, and the paired difference to
it), and how well each per-sample score flags flipped labels (`flip_auroc`). With
--start-default NAME the grid's default arm is the default of `fit` from that start
(`--init face`), recorded in `start_defaults`; the top-level `default_arm` stays the kept
file's. With --grid, every entry is tagged with the grid's name, and --keep carries over the
entries of other grids from an earlier summary file (grids run with different binaries are
never paired with each other).
"""
import json
import math
import statistics as st
import sys
from collections import defaultdict

# Two-sided 95 % quantiles of Student's t, df = 1..30 (beyond: 1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df):
    return T975[df - 1] if df <= len(T975) else 1.96


def mean_ci95(xs):
    """Mean of paired differences and its two-sided 95 % interval (Student t over them), or
    (mean, None, None) for a single difference."""
    m = st.mean(xs)
    if len(xs) < 2:
        return m, None, None
    half = t975(len(xs) - 1) * st.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


# The single-network arms the default must beat: CE, label smoothing, GCE, SCE, ELR, EAC.
SINGLE_ARMS = ("baseline", "label-smoothing", "gce", "sce", "elr", "eac")


def load(paths):
    latest = {}
    for path in paths:
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                latest[(r.get("regime", "scratch"), r["arm"], r["flip_rate"], r["seed"])] = r
    return list(latest.values())


def regime_effects(rows):
    """Paired difference between regimes (e.g. pretrained - scratch) per arm and flip rate."""
    acc = {(r.get("regime", "scratch"), r["arm"], r["flip_rate"], r["seed"]): 100 * r["accuracy"] for r in rows}
    regimes = sorted({k[0] for k in acc})
    out = []
    if len(regimes) < 2:
        return out
    ref = "scratch" if "scratch" in regimes else regimes[0]
    for other in (g for g in regimes if g != ref):
        for arm, rate in sorted({(k[1], k[2]) for k in acc if k[0] == other}):
            d = [acc[(other, arm, rate, s)] - acc[(ref, arm, rate, s)]
                 for (g, a, fr, s) in acc if g == other and a == arm and fr == rate and (ref, arm, rate, s) in acc]
            if not d:
                continue
            diff, low, high = mean_ci95(d)
            out.append({"regime": other, "reference": ref, "arm": arm, "flip_rate": rate,
                        "n": len(d), "diff": diff, "ci95_low": low, "ci95_high": high})
    return out


def summarise(rows):
    by = defaultdict(dict)  # (regime, rate, arm) -> seed -> row
    for r in rows:
        by[(r.get("regime", "scratch"), r["flip_rate"], r["arm"])][r["seed"]] = r
    out = []
    for (regime, rate, arm), runs in sorted(by.items()):
        acc = [100 * r["accuracy"] for r in runs.values()]
        base = by.get((regime, rate, "baseline"), {})
        paired = [100 * (runs[s]["accuracy"] - base[s]["accuracy"]) for s in runs if s in base]
        e = {"regime": regime, "flip_rate": rate, "arm": arm, "n": len(acc),
             "seeds": sorted(runs), "per_seed": [100 * runs[s]["accuracy"] for s in sorted(runs)],
             "mean": st.mean(acc),
             "std": st.stdev(acc) if len(acc) > 1 else None,
             "min_class_recall": min(min(r["per_class_recall"]) for r in runs.values()),
             "mean_per_class_recall": [st.mean(v) for v in zip(*(r["per_class_recall"] for r in runs.values()))],
             "classes": next(iter(runs.values()))["classes"],
             "paired_n": len(paired), "paired_diff": None, "ci95_low": None, "ci95_high": None}
        if arm != "baseline" and paired:
            e["paired_diff"], e["ci95_low"], e["ci95_high"] = mean_ci95(paired)
        an = [r["analysis"] for r in runs.values() if r.get("analysis")]
        for key in ("kl_latent_mean", "kl_softmax_mean", "spearman_alpha_entropy",
                    "auroc_alpha_flipped", "auroc_label_prob_flipped", "alpha_clean_mean",
                    "alpha_flipped_mean"):
            vals = [a[key] for a in an if a.get(key) is not None]
            if vals:
                e[key] = st.mean(vals)
        out.append(e)
    return out


def seed_set(text):
    """'1-5' -> [1, 2, 3, 4, 5]; '1,3' -> [1, 3]."""
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(x) for x in text.split(",")]


def vs_best_single(rows, default_arm, sets):
    """Per regime, flip rate and seed set: the default arm against the best single-network arm
    (by its mean over the seeds where both ran), paired over those seeds."""
    acc = {(r.get("regime", "scratch"), r["flip_rate"], r["arm"], r["seed"]): 100 * r["accuracy"]
           for r in rows}
    out = []
    for regime, rate in sorted({(k[0], k[1]) for k in acc}):
        for seeds in sets:
            have = [s for s in seeds if (regime, rate, default_arm, s) in acc]
            best, best_mean = None, None
            for arm in SINGLE_ARMS:
                common = [s for s in have if (regime, rate, arm, s) in acc]
                if len(common) < len(have) or not have:
                    continue
                m = st.mean(acc[(regime, rate, arm, s)] for s in common)
                if best_mean is None or m > best_mean:
                    best, best_mean = arm, m
            if best is None:
                continue
            d = [acc[(regime, rate, default_arm, s)] - acc[(regime, rate, best, s)] for s in have]
            diff, low, high = mean_ci95(d)
            out.append({"regime": regime, "flip_rate": rate, "seeds": have, "default_arm": default_arm,
                        "best_single_arm": best, "n": len(d), "diff": diff,
                        "ci95_low": low, "ci95_high": high})
    return out


def flip_auroc(entries):
    """AUROC for flipped labels of each per-sample score an arm's analysis gives."""
    scores = {"auroc_alpha_flipped": "alpha", "auroc_label_prob_flipped": "p(label)"}
    return [{"regime": e["regime"], "flip_rate": e["flip_rate"], "arm": e["arm"], "score": name,
             "n": e["n"], "seeds": e["seeds"], "auroc": e[key]}
            for e in entries for key, name in scores.items() if e.get(key) is not None]


def fmt(v, p=2, sign=False):
    if v is None:
        return "-"
    return f"{v:+.{p}f}" if sign else f"{v:.{p}f}"


def table(entries, regime, rate):
    rows = [e for e in entries if e["regime"] == regime and e["flip_rate"] == rate]
    if not rows:
        return
    rows.sort(key=lambda e: (e["arm"] != "baseline", -e["mean"]))
    print(f"\n#### {regime}, {rate:.0%} flipped labels\n")
    print("| arm | accuracy % (mean ± std) | n | paired diff to baseline | 95 % interval | min class recall % |")
    print("|---|---|---|---|---|---|")
    for e in rows:
        ci = "-" if e["ci95_low"] is None else f"{e['ci95_low']:+.2f} to {e['ci95_high']:+.2f}"
        print(f"| {e['arm']} | {fmt(e['mean'])} ± {fmt(e['std'])} | {e['n']} | "
              f"{fmt(e['paired_diff'], sign=True)} | {ci} | {100 * e['min_class_recall']:.1f} |")


def per_seed(rows, regime, rate):
    """Accuracy of every arm at every seed: the paired data behind the differences."""
    sel = [r for r in rows if r.get("regime", "scratch") == regime and r["flip_rate"] == rate]
    seeds = sorted({r["seed"] for r in sel})
    arms = sorted({r["arm"] for r in sel}, key=lambda a: (a != "baseline", a))
    acc = {(r["arm"], r["seed"]): 100 * r["accuracy"] for r in sel}
    print(f"\n#### {regime}, {rate:.0%}: accuracy % per seed\n")
    print("| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for a in arms:
        print(f"| {a} | " + " | ".join(fmt(acc.get((a, s))) for s in seeds) + " |")


def take(args, flag, default=None):
    """The value after `flag` (removed from args with it), or default."""
    if flag not in args:
        return default
    i = args.index(flag)
    value = args[i + 1]
    del args[i:i + 2]
    return value


def main():
    args = sys.argv[1:]
    json_out = take(args, "--json")
    default_arm = take(args, "--default-arm", "dmue-class-norm")
    sets = [list(range(1, 6)), list(range(6, 11))]
    if "--seed-sets" in args:
        i = args.index("--seed-sets")
        j = i + 1
        while j < len(args) and not args[j].endswith(".jsonl"):
            j += 1
        sets = [seed_set(a) for a in args[i + 1:j]]
        del args[i:j]
    grid = take(args, "--grid")
    # The grid's default arm is what `fit` trains from a named start (`--init face`), not the
    # default of `fit`: the top-level default_arm stays the kept file's.
    start = take(args, "--start-default")
    keep = take(args, "--keep")
    only = take(args, "--only-seeds")
    only = set(seed_set(only)) if only else None
    rows = load(args)
    if only:
        rows = [r for r in rows if r["seed"] in only]
    entries = summarise(rows)
    if grid:
        for e in entries:
            e["grid"] = grid
    for regime in sorted({e["regime"] for e in entries}):
        for rate in sorted({e["flip_rate"] for e in entries if e["regime"] == regime}, reverse=True):
            table(entries, regime, rate)
            per_seed(rows, regime, rate)
    an = [e for e in entries if "kl_softmax_mean" in e]
    if an:
        print("\n#### What the runs believe about the training samples (means over seeds)\n")
        print("| regime | flip rate | arm | KL(truth, latent) | KL(truth, softmax) | Spearman(alpha, entropy) | "
              "AUROC(alpha -> flipped) | alpha clean | alpha flipped |")
        print("|---|---|---|---|---|---|---|---|---|")
        for e in an:
            print(f"| {e['regime']} | {e['flip_rate']:.0%} | {e['arm']} | {fmt(e.get('kl_latent_mean'), 4)} | "
                  f"{fmt(e.get('kl_softmax_mean'), 4)} | {fmt(e.get('spearman_alpha_entropy'), 4)} | "
                  f"{fmt(e.get('auroc_alpha_flipped'), 4)} | {fmt(e.get('alpha_clean_mean'), 3)} | "
                  f"{fmt(e.get('alpha_flipped_mean'), 3)} |")
    effects = regime_effects(rows)
    if effects:
        print("\n#### Effect of the regime on each arm (paired by seed)\n")
        print("| regime - reference | flip rate | arm | n | difference | 95 % interval |")
        print("|---|---|---|---|---|---|")
        for e in effects:
            ci = "-" if e["ci95_low"] is None else f"{e['ci95_low']:+.2f} to {e['ci95_high']:+.2f}"
            print(f"| {e['regime']} - {e['reference']} | {e['flip_rate']:.0%} | {e['arm']} | {e['n']} | "
                  f"{fmt(e['diff'], sign=True)} | {ci} |")
    best = vs_best_single(rows, default_arm, sets)
    if best:
        print(f"\n#### The default ({default_arm}) against the best single-network arm (paired)\n")
        print("| regime | flip rate | seeds | best single arm | n | default - best | 95 % interval |")
        print("|---|---|---|---|---|---|---|")
        for b in best:
            ci = "-" if b["ci95_low"] is None else f"{b['ci95_low']:+.2f} to {b['ci95_high']:+.2f}"
            seeds = f"{b['seeds'][0]}-{b['seeds'][-1]}" if b["seeds"] else "-"
            print(f"| {b['regime']} | {b['flip_rate']:.0%} | {seeds} | {b['best_single_arm']} | {b['n']} | "
                  f"{fmt(b['diff'], sign=True)} | {ci} |")
    if grid:
        for e in effects + best:
            e["grid"] = grid
    auroc = flip_auroc(entries)
    for e in auroc:
        if grid:
            e["grid"] = grid
    source = args
    top_default, start_defaults = default_arm, {}
    if keep:
        # Other grids' figures stay as they were; this grid's are replaced.
        old = json.load(open(keep))
        other = lambda xs: [x for x in xs if x.get("grid") != grid]
        entries = other(old["entries"]) + entries
        effects = other(old.get("regime_effects", [])) + effects
        best = other(old.get("vs_best_single", [])) + best
        auroc = other(old.get("flip_auroc", [])) + auroc
        source = sorted(set(old.get("source", [])) | set(args))
        start_defaults = old.get("start_defaults", {})
        if start:
            top_default = old["default_arm"]
    if start:
        start_defaults[start] = default_arm
    if json_out:
        with open(json_out, "w") as f:
            out = {"source": source, "default_arm": top_default, "entries": entries,
                   "regime_effects": effects, "vs_best_single": best, "flip_auroc": auroc}
            if start_defaults:
                out["start_defaults"] = start_defaults
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
