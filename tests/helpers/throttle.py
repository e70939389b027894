"""Slow an extraction down in a child process, so that a test can kill it between two flushed batches.

`visfeat.engine.run.after_flush` is the hook; a child (`python -m visfeat`, or a Snakemake job) is reached through a
`sitecustomize` module on its PYTHONPATH that sets the hook when `visfeat.engine.run` is first imported, without
importing anything earlier than the program itself would.
"""
from __future__ import annotations

import os
from pathlib import Path

_SITECUSTOMIZE = '''\
import importlib.abc
import importlib.machinery
import sys
import time


class _SetHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "visfeat.engine.run":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.after_flush = lambda k: time.sleep({seconds!r})

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _SetHook())
'''


def throttled_env(folder: Path, seconds: float) -> dict[str, str]:
    """Environment additions that make a child's extraction sleep `seconds` after each flushed batch."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(seconds=float(seconds)))
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)}
