"""Write the README's preset table from the catalog, between the markers <!-- presets:begin/end -->.

    python scripts/preset_table.py          # rewrite README.md
    python scripts/preset_table.py --check  # exit 1 when README.md is out of date (tests/test_readme_presets.py)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- presets:begin -->", "<!-- presets:end -->"


def table() -> str:
    """One row per preset, in catalog order: name, summary, outputs (official weights' sizes)."""
    from visfeat.extractors.registry import PRESETS, presets

    presets()  # loads the catalog
    rows = ["| preset | what | fields |", "|---|---|---|"]
    for p in PRESETS.values():
        fields = ", ".join(f"`{f.name}`{f.describe(p.sizes)[len(f.name):]}" for f in p.outputs)
        if p.outputs_note:
            fields += f"; {p.outputs_note}"
        rows.append(f"| `{p.name}` | {p.summary} | {fields} |")
    return "\n".join(rows)


def section(text: str) -> str:
    """The README's table as written (between the markers)."""
    try:
        start = text.index(BEGIN) + len(BEGIN)
        return text[start:text.index(END, start)].strip("\n")
    except ValueError:
        raise SystemExit(f"{README}: markers {BEGIN} / {END} not found") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the README differs")
    a = ap.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    want = table()
    if section(text) == want:
        return 0
    if a.check:
        print(f"{README.name}: the preset table is out of date; run python scripts/preset_table.py", file=sys.stderr)
        return 1
    start = text.index(BEGIN) + len(BEGIN)
    README.write_text(text[:start] + "\n" + want + "\n" + text[text.index(END, start):], encoding="utf-8")
    print(f"{README.name}: preset table written ({want.count(chr(10)) - 1} presets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
