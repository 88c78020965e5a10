"""Where a `perf record` profile's time goes, by category (scripts/profile-train.sh).

    python3 scripts/lib/profile_summary.py PERF.DATA

Reads `perf report --sort dso,symbol` and sums the samples per category: convolution (oneDNN's
JIT-generated kernels, im2col, reorders), BatchNorm, Adam, other ATen kernels, the OpenMP runtime,
the kernel (page faults, scheduling), libc, and dmue-train's own code. Prints a Markdown table.
"""
import collections
import re
import subprocess
import sys

CATEGORIES = [
    "convolution (oneDNN JIT kernels, im2col, reorders)",
    "BatchNorm",
    "Adam (libtorch's fused kernel)",
    "other ATen kernels (elementwise, copies, reductions, pooling)",
    "OpenMP runtime (libgomp: waits, barriers)",
    "kernel (page faults, scheduling)",
    "libc (malloc, memcpy, memset)",
    "dmue-train itself (batches, augmentation, the loop)",
    "other",
]


def category(dso, sym):
    if dso.startswith("[JIT]") or "dnnl" in sym or "im2col" in sym or "mkldnn" in sym:
        return 0
    if "batch_norm" in sym:
        return 1
    if "adam" in sym:
        return 2
    if dso.startswith("libgomp"):
        return 4
    if dso == "[kernel.kallsyms]":
        return 5
    if dso.startswith("libc.so"):
        return 6
    if dso == "dmue-train":
        return 7
    if dso.startswith("libtorch") or dso.startswith("libc10"):
        return 3
    return 8


def main():
    out = subprocess.run(
        ["perf", "report", "-i", sys.argv[1], "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none"],
        capture_output=True, text=True, check=True,
    ).stdout
    share = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\[JIT\] tid \d+|\S+)\s+\[.\]\s+(.*)", line)
        if m:
            share[category(m.group(2), m.group(3))] += float(m.group(1))
    share[8] += max(0.0, 100.0 - sum(share.values()))
    print("| where | share of CPU samples |\n|---|---|")
    for i, name in enumerate(CATEGORIES):
        print(f"| {name} | {share[i]:.1f} % |")


if __name__ == "__main__":
    main()
