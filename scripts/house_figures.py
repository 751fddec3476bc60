"""Figures of the house: longest functions, largest files, imports between packages, module cycles (grimp).

    python scripts/house_figures.py [ROOT]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("prompts", "diffusion", "analysis", "lora", "generate", "classify", "controlnet", "segment", "study")


def sizes_and_functions(root: Path, packages: list[str]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines per file, lines per function), each as (count, where)."""
    files, functions = [], []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            files.append((len(source.splitlines()), str(path.relative_to(root))))
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return files, functions


def module_cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def main(root: Path) -> None:
    import grimp

    sys.path.insert(0, str(root))
    packages = [p for p in PACKAGES if (root / p).is_dir()]
    files, functions = sizes_and_functions(root, packages)
    print("longest functions:")
    for n, where in sorted(functions, reverse=True)[:10]:
        print(f"  {n:4d} {where}")
    print("largest files:")
    for n, where in sorted(files, reverse=True)[:10]:
        print(f"  {n:4d} {where}")
    graph = grimp.build_graph(*packages, cache_dir=None)
    edges = {(a, b) for a in packages for b in packages
             if a != b and graph.direct_import_exists(importer=a, imported=b, as_packages=True)}
    print("imports between packages:", sorted(edges))
    print("two-package cycles:", sorted((a, b) for a, b in edges if (b, a) in edges and a < b))
    print("module cycles:", module_cycles(graph))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
