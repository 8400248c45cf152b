#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

Usage: module-cycles.py CRATE_SRC_DIR [--facade] [--layers]

The graph: one node per module file (`shim/vm.rs` is `shim::vm`,
`shim/mod.rs` is `shim`, `lib.rs` is `crate`), one edge per `crate::`,
`super::` or `self::` path that names another module (or an item defined in
it; a name `lib.rs` re-exports counts for the module it comes from). Test
code (`#[cfg(test)] mod tests { ... }` at a file's end, `tests.rs`) is left
out. With --facade, `lib.rs` is the crate's facade and left out too: it may
re-export and call anything, but nothing below may depend on it (an edge to
it is reported as an error of its own).

Prints every strongly connected component of more than one module with the
import sites that make it, and exits 1 if there is any; with --layers (and
no cycle) prints the modules by layer: each one above everything it imports.
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel == ["lib"] or rel == ["main"]:
                name = "crate"
            elif rel[-1] == "mod":
                name = "::".join(rel[:-1])
            else:
                name = "::".join(rel)
            if rel[-1] == "tests" or name.endswith("::tests"):
                continue
            mods[name] = p
    return mods


def strip_tests(text):
    m = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+\s*\{", text, re.M)
    text = text[: m.start()] if m else text
    # comments and string literals never import
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return text


def expand_use(body):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    body = body.strip()
    i = body.find("{")
    if i < 0:
        return [body.split(" as ")[0].strip()]
    prefix = body[:i]
    inner = body[i + 1 : body.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += [prefix + x for x in expand_use(p)]
    return out


def paths(text, me):
    """Absolute module paths (`crate::a::b::Item`) the file refers to."""
    out = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", text, re.S):
        out += [(p, m.start()) for p in expand_use(" ".join(m.group(1).split()))]
    for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
        out.append((m.group(0), m.start()))
    res = []
    for p, pos in out:
        segs = [s for s in p.replace(" ", "").split("::") if s]
        base = me.split("::") if me != "crate" else []
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
        if segs and segs[0] == "crate":
            base, segs = [], segs[1:]
        res.append(("::".join(base + segs), pos))
    return res


def reexports(lib_text):
    """Names lib.rs re-exports from its modules: name -> module."""
    out = {}
    for m in re.finditer(r"\bpub use\s+([^;]*);", lib_text, re.S):
        for p in expand_use(" ".join(m.group(1).split())):
            segs = p.split("::")
            if segs[0] in ("crate", "self"):
                segs = segs[1:]
            if len(segs) >= 2:
                out[segs[-1]] = "::".join(segs[:-1])
    return out


def owner(path, mods, rex):
    segs = path.split("::") if path else []
    for n in range(len(segs), 0, -1):
        cand = "::".join(segs[:n])
        if cand in mods:
            return cand
    if segs and segs[0] in rex:
        r = rex[segs[0]]
        while r and r not in mods:
            r = "::".join(r.split("::")[:-1])
        return r or "crate"
    return "crate"


def tarjan(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    src = sys.argv[1]
    facade = "--facade" in sys.argv
    mods = modules(src)
    texts = {m: strip_tests(open(p).read()) for m, p in mods.items()}
    rex = reexports(texts.get("crate", ""))
    graph, sites, errors = {m: set() for m in mods}, {}, []
    for m, t in texts.items():
        if facade and m == "crate":
            continue
        for p, pos in paths(t, m):
            o = owner(p, mods, rex)
            if o == m or o.startswith(m + "::") and False:
                continue
            if o == "crate":
                if facade:
                    line = t[:pos].count("\n") + 1
                    errors.append(f"{mods[m]}:{line}: {m} uses the facade (crate::{p}): name the module that defines it")
                continue
            # a parent module file only declares its children
            if o.startswith(m + "::") and m != "crate":
                continue
            graph[m].add(o)
            sites.setdefault((m, o), t[:pos].count("\n") + 1)
    bad = [c for c in tarjan(graph) if len(c) > 1]
    for e in errors:
        print(e)
    for c in bad:
        print(f"import cycle among {len(c)} modules of {src}: {', '.join(c)}")
        for a in c:
            for b in sorted(graph[a]):
                if b in c:
                    print(f"  {mods[a]}:{sites[(a, b)]}: {a} -> {b}")
    if bad or errors:
        sys.exit(1)
    if "--layers" in sys.argv:
        # each module's layer: one above the highest module it imports
        level = {}

        def lv(v):
            if v not in level:
                level[v] = 1 + max((lv(w) for w in graph[v]), default=-1)
            return level[v]

        by = {}
        for v in graph:
            if not (facade and v == "crate"):
                by.setdefault(lv(v), []).append(v)
        for k in sorted(by):
            print(f"L{k}: {' '.join(sorted(by[k]))}")


if __name__ == "__main__":
    main()
