"""Fails when a module of train/ or deploy/ imports from a higher layer, when modules import
each other in a cycle, or when a function runs over 100 lines without saying why.

Each crate's top-level modules (a file `src/x.rs` or a folder `src/x/`) are given a layer
below; a module may use modules of its own layer or lower layers, never higher. Cycles are
looked for between all modules (files), a folder's `mod.rs` being the folder itself: a child
using its parent folder's items and the parent declaring the child is not a cycle, any other
loop is. The binary's own modules (`main.rs` and what it declares) sit above the library.

Edges are the `crate::` and `super::` paths of the code (use declarations, nested braces
included, and inline paths); comments are ignored.

A function longer than 100 lines needs a comment starting `// Long:` among the comments and
attributes right above it, saying why splitting it would make it harder to read.

    python3 scripts/check-layers.py           # run by scripts/test.sh
    python3 scripts/check-layers.py --graph   # also print every edge
"""
import os
import re
import sys
from collections import defaultdict

# Layer of each top-level module. Lower layers never import higher ones.
LAYERS = {
    "train": {
        "util": 0,
        "data": 1, "dist": 1, "model": 1,
        "synth": 2, "prepare": 2, "fit": 2,
        "inspect": 3, "export": 3,
    },
    "deploy": {
        "numeric": 0, "logging": 0, "preprocess": 0,
        "error": 1, "image_io": 1, "onnx": 1,
        "engine": 2, "face": 2, "model_card": 2,
        "pipeline": 3,
        "server": 4, "web": 4, "fuzzing": 4,
    },
}
# The binary's modules (declared from main.rs): they may use anything of the library.
BIN_ROOTS = {"main", "cli"}

USE = re.compile(r"\buse\s+((?:crate|super|self)\b[^;]*);", re.S)
PATH = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    i = tree.find("{")
    if i < 0:
        return [tree]
    head, body = tree[:i], tree[i + 1:-1]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    if cur:
        parts.append(cur)
    return [p for part in parts for p in expand(head + part)]


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel == ["lib"]:
        return ()
    return tuple(rel)


def resolve(module, path, modules):
    """The module a `crate::` or `super::` path points into (its longest module prefix)."""
    parts = path.split("::")
    if parts[0] == "super":
        base = list(module)
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
        parts = base + parts
    else:
        parts = parts[1:]
    parts = [p.split(" as ")[0] for p in parts if p not in ("self", "*")]
    for n in range(len(parts), 0, -1):
        if tuple(parts[:n]) in modules:
            return tuple(parts[:n])
    return None


FN = re.compile(r"^(\s*)(?:pub(?:\([a-z]+\))?\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")
MAX_LINES = 100


def long_functions(path):
    """(name, first line, length) of each function over MAX_LINES without a `// Long:` reason."""
    lines = open(path).read().split("\n")
    found = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        indent = m.group(1)
        j = i
        while j < len(lines) and "{" not in lines[j] and not lines[j].rstrip().endswith(";"):
            j += 1
        if j == len(lines) or "{" not in lines[j]:
            continue  # a declaration without a body
        k = j
        while k < len(lines) and not re.match(re.escape(indent) + r"\}(\s|$|[,;)])", lines[k] + " "):
            k += 1
        length = k - i + 1
        if length <= MAX_LINES:
            continue
        above = i - 1
        reason = False
        while above >= 0 and lines[above].strip().startswith(("//", "#[")):
            reason |= lines[above].strip().startswith("// Long:")
            above -= 1
        if not reason:
            found.append((m.group(2), i + 1, length))
    return found


def check_crate(name, graph_out):
    src = os.path.join(name, "src")
    files = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".rs")]
    modules = {module_of(src, f): f for f in files}
    layers = LAYERS[name]
    errors = []
    edges = defaultdict(set)
    for mod, path in modules.items():
        top = mod[0] if mod else "lib"
        if top not in layers and top not in BIN_ROOTS and mod:
            errors.append(f"{path}: top-level module '{top}' has no layer in scripts/check-layers.py")
        text = strip_comments(open(path).read())
        refs = [p for u in USE.findall(text) for p in expand(u)]
        refs += PATH.findall(USE.sub("", text))
        for ref in refs:
            target = resolve(mod, ref, modules)
            if target is None or target == mod or not mod:
                continue
            # A folder and its own children: the folder's face, not a loop between peers.
            if target == mod[: len(target)] or mod == target[: len(mod)]:
                continue
            edges[mod].add(target)
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            if graph_out:
                print(f"{name}: {'::'.join(a)} -> {'::'.join(b)}")
            la, lb = layers.get(a[0]), layers.get(b[0])
            if a[0] in BIN_ROOTS or la is None or lb is None:
                continue
            if lb > la:
                errors.append(f"{modules[a]}: '{'::'.join(a)}' (layer {la}) imports "
                              f"'{'::'.join(b)}' (layer {lb}), a higher layer")
    for cycle in cycles(edges):
        errors.append(f"{name}: import cycle: " + " -> ".join("::".join(m) for m in cycle))
    for path in sorted(files):
        for fn, line, length in long_functions(path):
            errors.append(f"{path}:{line}: fn {fn} has {length} lines, over {MAX_LINES}, "
                          "with no `// Long:` comment saying why")
    return errors, sum(len(t) for t in edges.values()), len(modules)


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    graph = "--graph" in sys.argv
    errors, report = [], []
    for crate in LAYERS:
        e, n_edges, n_mods = check_crate(crate, graph)
        errors += e
        report.append(f"{crate}: {n_mods} modules, {n_edges} imports")
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        sys.exit(f"check-layers: {len(errors)} problem(s)")
    print("check-layers: no cycle, no upward import, no unexplained long function ("
          + "; ".join(report) + ")")


if __name__ == "__main__":
    main()
