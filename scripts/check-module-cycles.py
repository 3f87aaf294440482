#!/usr/bin/env python3
"""Fails when two source files of one crate depend on each other, directly or around a loop.

A file depends on another when its non-test code names an item of the other's module through a
`crate::` or `super::` path, or through a name the crate re-exports (`pub use`). A module and its
own submodules are one unit here: a parent that declares a child and re-exports its items, and a
child that uses its parent's, is Rust's normal nesting, not a loop between rooms. Comments and
`#[cfg(test)]` modules are skipped.

Usage: scripts/check-module-cycles.py [crates-dir]   (default: crates)
"""

import os
import re
import sys

PATH = r"(?:[a-z_0-9]+::)*[A-Za-z_0-9]+"


def modules(src):
    """Module path (`a::b`, the crate root is '') -> source text without comments or tests."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
            if rel[-1] == "mod" or (len(rel) == 1 and rel[0] in ("lib", "main")):
                rel = rel[:-1]
            text = open(os.path.join(root, f), encoding="utf-8").read().split("#[cfg(test)]")[0]
            code = "\n".join(line for line in text.splitlines() if not line.strip().startswith("//"))
            mods["::".join(rel)] = code
    return mods


def reexports(mods):
    """(module, name) -> the module path a `pub use` in `module` takes `name` from."""
    out = {}
    for m, text in mods.items():
        for body in re.findall(r"pub(?:\((?:crate|super)\))? use ([^;]*);", text, re.S):
            body = " ".join(body.split())
            group = re.match(r"([a-z_0-9:]+)::\{(.*)\}$", body)
            if group:
                base, items = group.group(1), [x.strip() for x in group.group(2).split(",") if x.strip()]
            else:
                parts = body.split("::")
                base, items = "::".join(parts[:-1]), [parts[-1]]
            absolute = base.startswith("crate::")
            base = base.removeprefix("crate::").removeprefix("self::")
            for item in items:
                name = item.split(" as ")[-1].strip().split("::")[-1]
                out[(m, name)] = base if absolute else "::".join(p for p in (m, base) if p)
    return out


def edges(mods):
    names, reexp = set(mods), reexports(mods)

    def resolve(path, depth=0):
        parts = path.split("::")
        for i in range(len(parts) - 1, -1, -1):
            owner = "::".join(parts[:i])
            if owner in names and (owner, parts[i]) in reexp and depth < 8:
                return resolve(reexp[(owner, parts[i])] + "::" + parts[i], depth + 1) or owner
        for i in range(len(parts), 0, -1):
            if "::".join(parts[:i]) in names:
                return "::".join(parts[:i])
        return None

    def nested(a, b):
        return a == "" or b == "" or a.startswith(b + "::") or b.startswith(a + "::")

    graph = {m: set() for m in mods}
    for m, text in mods.items():
        own = m.split("::") if m else []
        refs = re.findall(r"crate::(" + PATH + ")", text)
        for base, group in re.findall(r"crate::((?:[a-z_0-9]+::)*)\{([^}]*)\}", text):
            refs += [base + x.strip() for x in group.split(",") if x.strip()]
        for supers, rest in re.findall(r"((?:super::)+)(" + PATH + ")", text):
            up = own[: len(own) - supers.count("super::")]
            refs.append("::".join(up + [rest]))
        for supers, group in re.findall(r"((?:super::)+)\{([^}]*)\}", text):
            up = own[: len(own) - supers.count("super::")]
            refs += ["::".join(up + [x.strip().split("::")[0]]) for x in group.split(",") if x.strip()]
        for r in refs:
            target = resolve(r)
            if target is not None and target != m and not nested(target, m):
                graph[m].add(target)
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "crates"
    bad = 0
    for crate in sorted(os.listdir(root)):
        src = os.path.join(root, crate, "src")
        if not os.path.isdir(src):
            continue
        graph = edges(modules(src))
        for comp in cycles(graph):
            bad += 1
            print(f"{crate}: files that depend on each other: {', '.join(comp)}", file=sys.stderr)
            for m in comp:
                print(f"    {m or '(root)'} -> {', '.join(sorted(graph[m] & set(comp)))}", file=sys.stderr)
    if bad:
        sys.exit(1)
    print(f"no module cycles in {root}/*/src")


if __name__ == "__main__":
    main()
