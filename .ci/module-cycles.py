#!/usr/bin/env python3
"""Fails when two modules of one crate import each other, directly or round a
longer loop (issue #12: "no import cycle between modules of a crate").

A module is a top-level module of the crate (`src/x.rs` or `src/x/`); its
nested modules count as part of it. Uses are read from `crate::x` paths
(in `use` lines and in expressions) and from `super::x` paths resolved
against the file's place (in `src/a.rs`, `super::x` is `crate::x`; in
`src/a/b.rs`, `super::super::x` is). The
crate root (`lib.rs`/`main.rs`) is the crate's face, not a module: edges into
it or out of it are not counted. Test modules are not read.
"""
import os
import re
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def top_module(src, path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    if first in ("lib.rs", "main.rs"):
        return None
    return first[:-3] if first.endswith(".rs") else first


def strip_tests(text):
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    # Comments (doc links such as [`crate::server`]) are not imports.
    return re.sub(r"//[^\n]*", "", text)


def module_path(src, path):
    """The module path of a file: `src/a.rs` and `src/a/mod.rs` are `a`,
    `src/a/b.rs` is `a::b`, the crate root is empty."""
    parts = os.path.relpath(path, src).split(os.sep)
    last = parts.pop()
    if last not in ("mod.rs", "lib.rs", "main.rs") or parts:
        if last != "mod.rs":
            parts.append(last[:-3])
    return parts


def super_targets(src, path, text):
    """Top-level modules named through `super::` paths (in `use` lines,
    groups and expressions): in `src/x.rs`, `super::y` is `crate::y`."""
    here = module_path(src, path)
    found = []
    for supers, rest in re.findall(r"\b((?:super::)+)(\{[^}]*\}|[a-z_][a-z0-9_]*)", text):
        up = supers.count("super::")
        if up > len(here):
            continue
        base = here[: len(here) - up]
        if base:
            continue  # a sibling inside the same top-level module
        if rest.startswith("{"):
            group = rest[1:-1]
            found += re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)\s*(?=::|,|$|\s)", group)
        else:
            found.append(rest)
    return found


def crate_graph(src):
    modules = set()
    files = []
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                m = top_module(src, path)
                if m:
                    modules.add(m)
                files.append((path, m))
    edges = {m: set() for m in modules}
    for path, m in files:
        if m is None:
            continue
        text = strip_tests(open(path, encoding="utf-8").read())
        for target in re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text):
            if target in modules and target != m:
                edges[m].add(target)
        for target in super_targets(src, path, text):
            if target in modules and target != m:
                edges[m].add(target)
        for group in re.findall(r"\buse crate::\{([^}]*)\}", text):
            for target in re.findall(r"\b([a-z_][a-z0-9_]*)::", group) + re.findall(r"^\s*([a-z_][a-z0-9_]*)\s*$", group, re.M):
                if target in modules and target != m:
                    edges[m].add(target)
    return edges


def cycles(edges):
    found = []
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(edges[n]):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    return found


def main():
    bad = []
    srcs = [os.path.join(root, "src")]
    crates = os.path.join(root, "crates")
    srcs += [os.path.join(crates, c, "src") for c in sorted(os.listdir(crates))]
    for src in srcs:
        if not os.path.isdir(src):
            continue
        for loop in cycles(crate_graph(src)):
            bad.append(f"{os.path.relpath(src, root)}: {' -> '.join(loop)}")
    for b in bad:
        print("import cycle:", b)
    if bad:
        sys.exit(1)
    print("no import cycle between the modules of any crate")


main()
