"""An extraction's measurements as data: `run_extraction`'s counts and timings, written as JSON beside the job's
log (`visfeat extract --stats`) and read back for the report's throughput figure.

They stay out of the store, whose bytes must not depend on how fast it was made (SOURCE_DATE_EPOCH). The log's
done line says the same for a person; it is read back only for runs that wrote no stats file. Its format and its
parser live here side by side, so that the line and what reads it cannot drift apart. Standard library only at
import: the report runs in the CPU environment."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATS_SUFFIX = ".stats.json"  # the extract rule (workflow/rules/extract.smk) writes {shard}.stats.json beside {shard}.log


def done_line(res: dict[str, Any], out: str | os.PathLike | None = None) -> str:
    """The extraction log's last line: `res` (run_extraction's result) for a person. With failures and the store
    `out` it names the first failed ids and where to read them all (store/summary.py), after the counts that
    DONE_LINE reads: an id may hold any character, so it goes where the parser never looks."""
    failed = ""
    if res["failed"] and out is not None:
        from visfeat.store.summary import failed_text, read_summary

        failed = "; " + failed_text(read_summary(out).failed, out)
    return (f"[visfeat] done: {res['images']} images, {res['failed']} failed, {res['reused']} reused, "
            f"{res['processed']} processed now in {res['seconds']:.1f} s "
            f"({res['processed'] / max(res['seconds'], 1e-9):.2f} img/s){failed}; seconds: "
            + ", ".join(f"{k} {v:.2f}" for k, v in res["timing"].items()))


# `done_line` read back; lines written before incremental reruns have no reused count
DONE_LINE = re.compile(r"\[visfeat\] done: (?P<images>\d+) images, (?P<failed>\d+) failed, "
                       r"(?:(?P<reused>\d+) reused, )?(?P<processed>\d+) processed now in (?P<seconds>[\d.]+) s")


def write_stats(path: str | os.PathLike | None, res: dict[str, Any]) -> None:
    """`res` as JSON at `path`; None (no --stats given): nothing. A run that found its store up to date writes
    `{"images": null, "skipped": true}`: it measured nothing."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")


def throughput(logs: Iterable[str | os.PathLike]) -> list[tuple[str, int, float]]:
    """(shard, images processed now, seconds) of each extraction job that measured any. Each of `logs` is a job's
    log (`{shard}.log`) or its stats file (`{shard}.stats.json`); the stats file is read when there is one, else
    the log's last done line. Left out: a job that found its store up to date, and one with neither file (a
    published store was imported, not extracted)."""
    out = []
    for path in map(Path, logs):
        stats = path if path.name.endswith(STATS_SUFFIX) else path.with_name(path.stem + STATS_SUFFIX)
        shard = stats.name.removesuffix(STATS_SUFFIX)
        if stats.exists():
            res = json.loads(stats.read_text())
            if res.get("images") is not None:
                out.append((shard, int(res["processed"]), float(res["seconds"])))
        elif path.exists():
            m = None
            for m in DONE_LINE.finditer(path.read_text(errors="replace")):
                pass
            if m:
                out.append((shard, int(m["processed"]), float(m["seconds"])))
    return out
