"""README.md's commands, taken from its text and run in its order on a copy of the workflow, as a new user types
them after `make run`: when the README and the behaviour drift apart, this fails."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, copy_workflow, snakemake

pytestmark = pytest.mark.workflow

README = REPO / "README.md"
SECTION = "## Two commands on a fresh machine"  # its first two code blocks: `make run`, then the commands after it
# each command the issue a newcomer filed (issue 29) asked to be kept true, as its first words in the README
REQUIRED = ("make run", "snakemake kmeans", "snakemake --report", "visfeat inspect", "visfeat show", "visfeat presets")


def code_blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def readme_commands() -> list[list[str]]:
    """The section's shell commands in order, comments dropped."""
    section = README.read_text(encoding="utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line, comments=True) for block in code_blocks(section)[:2] for line in block.splitlines()
            if shlex.split(line, comments=True)]


def make_run_command() -> list[str]:
    """What `make run` runs after its setup: the run recipe's last line, minus the PATH it sets (conftest.snakemake
    puts this venv first on PATH, as that line does)."""
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), flags=re.MULTILINE)[1]
    words = shlex.split(recipe.strip().splitlines()[-1])
    return [w for w in words if not w.startswith("PATH=")]


def test_readme_lists_the_commands_a_newcomer_needs():
    typed = [" ".join(c) for c in readme_commands()]
    first = [next((k for k, t in enumerate(typed) if t.startswith(r)), None) for r in REQUIRED]
    assert None not in first, dict(zip(REQUIRED, first))
    run, kmeans, report = first[:3]
    assert run < kmeans < report, "the report collects what `make run` and `snakemake kmeans` built: run them first"
    assert any(re.fullmatch(r"visfeat presets [\w-]+", t) for t in typed), "one preset's card: visfeat presets NAME"


def test_readme_commands_run_in_order(tmp_path):
    wd = copy_workflow(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(wd / "src")}
    ran = []
    for cmd in readme_commands():
        if cmd == ["make", "test"]:  # the whole suite: this test is part of it
            continue
        if cmd == ["make", "run"]:
            cmd = make_run_command()
            assert cmd == ["snakemake"], cmd
        if cmd[0] == "snakemake":
            p = snakemake(wd, *cmd[1:])
        else:
            assert cmd[0] == "visfeat", f"README command {cmd} is neither make, snakemake nor visfeat"
            p = subprocess.run([sys.executable, "-m", "visfeat", *cmd[1:]], cwd=wd, env=env, capture_output=True,
                               text=True, timeout=300, check=False)
            assert p.returncode == 0, f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        ran.append((cmd, p.stdout))
    out: dict[str, str] = {}
    for c, o in ran:
        out.setdefault(shlex.join(c), o)  # `make run`'s snakemake, not the README's second, which has nothing to do
    assert "visfeat: this run wrote\n  results/sample/effnet-lite0.h5: 8 images, 0 failed" in out["snakemake"]
    assert (wd / "report.html").stat().st_size > 100_000  # the figures are inside the page
    assert "images:     8" in out["visfeat inspect results/sample/effnet-lite0.h5"]
    assert (wd / "chelsea.png").exists()
    assert out["visfeat presets effnet-lite0"].startswith("effnet-lite0  [") and "options" in out["visfeat presets effnet-lite0"]

    # the README's Python block, where `make run` left its store
    for block in code_blocks(README.read_text(encoding="utf-8"), "python"):
        p = subprocess.run([sys.executable, "-c", block], cwd=wd, env=env, capture_output=True, text=True, timeout=300,
                           check=False)
        assert p.returncode == 0, f"README python block failed:\n{block}\n{p.stderr[-3000:]}"
