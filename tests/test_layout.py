"""The package's dependency rule (docs/architecture.md "Layout"): each package imports only lower layers, there
is no import cycle, and the light entry points stay light (config checks and the CPU steps run without torch)."""
import subprocess
import sys

from conftest import REPO


def test_packages_import_only_lower_layers():
    p = subprocess.run([sys.executable, str(REPO / "scripts/import_graph.py")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_no_module_is_left_outside_a_layer():
    sys.path.insert(0, str(REPO / "scripts"))
    import import_graph

    top = {f.stem if f.is_file() else f.name for f in import_graph.PKG.iterdir()
           if (f.suffix == ".py" or (f / "__init__.py").exists())}
    assert top == set(import_graph.RANK)


def test_workflow_layer_imports_nothing_heavy():
    """Snakemake parses the workflow with visfeat.workflow: no torch, h5py or matplotlib on the way."""
    code = ("import sys, visfeat.workflow.config, visfeat.workflow.args, visfeat.extractors.registry;"
            "registry = visfeat.extractors.registry; registry.presets();"
            "print(sorted(m for m in ('torch', 'h5py', 'matplotlib', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": ""}).stdout.strip()
    assert out == "[]", out
