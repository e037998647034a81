#!/usr/bin/env python3
"""Import cycles between the source files of a Rust crate (approximate, textual).

    modcycles.py CRATE_SRC_DIR   -> prints each cycle (files), last line "cycles: N";
                                    exits 1 when N > 0 (so CI fails), 2 on bad usage

Vendored from the project's shared tools (same scan, same output) so that a fresh clone can
run it: `.ci/run` runs it on mproc/src.

A file imports another when it names `crate::a::b` / `super::x` / `self::x` paths that resolve to
that file's module. Good enough to see file-level cycles; open the code before believing one.
"""
import os, re, sys

if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
    print("usage: modcycles.py CRATE_SRC_DIR", file=sys.stderr)
    sys.exit(2)
root = os.path.abspath(sys.argv[1])
mods = {}  # module path tuple -> file
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(d, f)
        rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib", "main"):
            rel = rel[:-1]
        mods[tuple(rel)] = p

def resolve(path):
    """Longest module prefix of path that is a file."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None

edges = {m: set() for m in mods}
pat = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
group = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}", re.S)
for m, p in mods.items():
    src = open(p, encoding="utf-8", errors="replace").read()
    src = re.sub(r"//[^\n]*", "", src)
    is_dir_mod = os.path.basename(p) in ("mod.rs", "lib.rs", "main.rs")
    here = list(m) if is_dir_mod else list(m[:-1])  # the module that `super` / `self` start from
    def base(kind):
        if kind == "crate":
            return []
        if kind == "self":
            return list(m)
        return here[:-1] if is_dir_mod else here
    refs = []
    for kind, rest in pat.findall(src):
        refs.append(base(kind) + [x for x in rest.split("::") if x])
    for kind, rest, inner in group.findall(src):
        pre = base(kind) + [x for x in rest.split("::") if x]
        for item in inner.split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                refs.append(pre + [x for x in item.split("::") if x and x != "{"])
    for r in refs:
        t = resolve(r)
        if t is not None and t != m and t != ():
            edges[m].add(t)

# Tarjan SCC
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v:
                break
        if len(c) > 1:
            sccs.append(c)
for v in list(edges):
    if v not in index:
        strong(v)
for c in sccs:
    print("cycle:", " ".join(sorted(os.path.relpath(mods[x], root) for x in c)))
print(f"cycles: {len(sccs)}")
sys.exit(1 if sccs else 0)
