#!/usr/bin/env python3
"""Print visfeat's package-level import graph (every import statement, lazy ones too) and check it against the
dependency rule in docs/architecture.md: a package imports only packages of a lower layer.

    python scripts/import_graph.py            # the graph, one line per package, and any violation
Exit status 1 when a package imports upward or sideways."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "visfeat"

# Lowest first. A package may import its own modules and any package of a lower layer, nothing else.
LAYERS: list[tuple[str, ...]] = [
    ("version",),  # the version string, stamped by every layer
    ("store",),  # the HDF5 feature store: its format, writer, readers, merges
    ("sources",),  # dataset inputs: source kinds, images, manifests, tars, downloads, given boxes (read from stores)
    ("detection",),  # the detector library (plain PyTorch); reads decoded images' sizes from sources
    ("extractors",),  # presets, weights and the model families
    ("engine", "interop", "analysis"),  # running extractors into stores; exports/imports; k-means and reports
    ("workflow",),  # config validation and each rule's arguments (no torch, no h5py)
    ("cli", "__init__"),  # entry points: the command line, the Python API
    ("__main__",),  # python -m visfeat
]
RANK = {p: k for k, layer in enumerate(LAYERS) for p in layer}


def package_of(module: str) -> str:
    """visfeat.engine.run -> engine; visfeat.cli -> cli; visfeat -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def edges() -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the importing files."""
    out: dict[str, dict[str, set[str]]] = {p: {} for p in RANK}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent).with_suffix("")
        mod = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        src = package_of(mod)
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("visfeat"):
                if node.module == "visfeat":  # `from visfeat import x`: x is a package or a name of __init__
                    targets = [a.name if a.name in RANK else "__init__" for a in node.names]
                else:
                    targets = [package_of(node.module)]
            elif isinstance(node, ast.ImportFrom) and node.level:
                targets = ["<relative>"]
            elif isinstance(node, ast.Import):
                targets = [package_of(a.name) for a in node.names if a.name.startswith("visfeat")]
            for t in targets:
                if t != src:
                    out.setdefault(src, {}).setdefault(t, set()).add(str(f.relative_to(PKG)))
    return out


def violations(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    bad = []
    for src, deps in graph.items():
        if src not in RANK:
            bad.append(f"{src}: a package missing from LAYERS")
            continue
        for dst, files in deps.items():
            if dst == "<relative>":
                bad.append(f"{src}: relative import in {', '.join(sorted(files))} (visfeat imports are absolute)")
            elif dst not in RANK or RANK[dst] >= RANK[src]:
                bad.append(f"{src} -> {dst}: not a lower layer ({', '.join(sorted(files))})")
    return bad


def main() -> int:
    graph = edges()
    for k, layer in enumerate(LAYERS):
        for p in layer:
            print(f"{k} {p:<11} -> {', '.join(sorted(graph.get(p, {}))) or '-'}")
    bad = violations(graph)
    for b in bad:
        print("violation:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
