#!/usr/bin/env python3
"""Fail when modules that are siblings inside a crate import each other in a
cycle (issue 16: "no import cycle is left"). Reads `crate::`/`super::`/`self::`
paths in every .rs file of each crate, without comments and without the
`#[cfg(test)] mod tests { ... }` block at a file's end (a test that uses two
siblings is not a dependency of the product), and prints every cycle."""
import os
import re
import sys

CRATES = ["fs/src", "src/remote", "src/snapshotter", "src/image", "bench/src",
          "tests/support/src", "proto/src", "src"]
NESTED = ("src/remote", "src/snapshotter", "src/image")
PATH = re.compile(r"(?:crate|super|self)(?:::(?:super|\w+))+")
TESTS = re.compile(r"#\[cfg\(test\)\](?:\s*#\[[^\]]*\])*\s*mod tests\s*\{.*", re.S)


def module_of(root, path):
    parts = os.path.relpath(path, root)[:-3].split("/")
    return parts[:-1] if parts[-1] in ("mod", "lib", "main") else parts


def edges_of(root):
    edges = {}
    for d, _, files in os.walk(root):
        if root == "src" and d.startswith(NESTED):
            continue
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(d, name)
            here = module_of(root, path)
            with open(path) as f:
                text = "\n".join(l for l in f.read().split("\n") if not l.strip().startswith("//"))
            for used in PATH.findall(TESTS.sub("", text)):
                parts = used.split("::")
                if parts[0] == "crate":
                    target = parts[1:]
                else:
                    target, i = list(here), 1 if parts[0] == "self" else 0
                    while i < len(parts) and parts[i] == "super":
                        target, i = target[:-1], i + 1
                    target += parts[i:]
                k = 0
                while k < min(len(here), len(target)) and here[k] == target[k]:
                    k += 1
                if k < len(here) and k < len(target):
                    a = (root, *here[: k + 1])
                    b = (root, *here[:k], target[k])
                    edges.setdefault(a, set()).add(b)
    return edges


def cycles(edges):
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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
                found.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    edges = {}
    for root in CRATES:
        edges.update(edges_of(root))
    found = cycles(edges)
    for comp in found:
        print("import cycle:", " <-> ".join("/".join(m) for m in sorted(comp)))
    print(f"module import cycles: {len(found)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
