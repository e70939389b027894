#!/usr/bin/env python3
"""Print the rule -> `visfeat` subcommand -> WorkflowArgs method -> CLI function -> package functions table, read
from the workflow's rule files and the CLI's code (nothing hand-kept, so it cannot go stale):

    python scripts/rule_table.py          # a Markdown table, as in docs/architecture.md
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

RULE = re.compile(r"^rule (\w+):", re.M)


def rules() -> list[tuple[str, str, str]]:
    """(rule, subcommand, WorkflowArgs method) for every rule whose shell line runs `visfeat(...)`."""
    out = []
    for f in sorted((REPO / "workflow/rules").glob("*.smk")):
        text = f.read_text()
        starts = [(m.start(), m.group(1)) for m in RULE.finditer(text)] + [(len(text), "")]
        for (a, name), (b, _) in zip(starts, starts[1:]):
            body = text[a:b]
            cmd = re.search(r'visfeat\(\s*f?"([\w-]+)', body)
            args = re.search(r"ARGS\.(\w+)\(", body)
            if cmd:
                out.append((name, cmd.group(1), args.group(1) if args else ""))
    return out


def cli_functions() -> dict[str, tuple[str, list[str]]]:
    """subcommand -> (its cmd_* function, the `module.function`s that function imports from visfeat)."""
    from visfeat.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    tree = ast.parse((REPO / "src/visfeat/cli.py").read_text())
    bodies = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    out = {}
    for name, p in sub.choices.items():
        func = p.get_default("func").__name__
        calls = []
        for node in ast.walk(bodies[func]):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("visfeat"):
                mod = node.module.removeprefix("visfeat.")
                calls += [f"{mod}.{a.name}" for a in node.names]
        out[name] = (func, calls)
    return out


def main() -> int:
    funcs = cli_functions()
    print("| rule | subcommand | arguments (`WorkflowArgs`) | CLI | calls |")
    print("|---|---|---|---|---|")
    for rule, cmd, method in rules():
        func, calls = funcs.get(cmd, ("?", []))
        print(f"| `{rule}` | `visfeat {cmd}` | {f'`{method}`' if method else '-'} | `cli.{func}` | "
              f"{', '.join(f'`{c}`' for c in calls) or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
