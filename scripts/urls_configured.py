"""Exit 0 when a config configures a `urls` source (a dataset img2dataset downloads first), else 1: `make run`
builds .venv-img2dataset (img2dataset needs pandas<3, so it has a venv of its own) only when the run needs it.

    python scripts/urls_configured.py [config/config.yaml]

A config that does not validate also exits 1: Snakemake, run next, names the bad key."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def urls_configured(config_path: Path) -> bool:
    import yaml

    from visfeat.sources.kinds import dataset_source
    from visfeat.workflow.config import load_registry, validate_config

    cfg = yaml.safe_load(config_path.read_text())
    registry = Path(cfg.get("dataset_registry", "config/datasets.yaml"))
    registry = registry if registry.is_absolute() or registry.exists() else ROOT / registry
    reg = load_registry(str(registry), str(ROOT / "workflow/schemas/datasets.schema.yaml"))
    cfg = validate_config(cfg, str(ROOT / "workflow/schemas/config.schema.yaml"), registry=reg)
    return any(dataset_source(cfg, reg, d).downloads for d in cfg["datasets"])


def main(argv: list[str]) -> int:
    try:
        return 0 if urls_configured(Path(argv[0] if argv else ROOT / "config/config.yaml")) else 1
    except (ValueError, KeyError, OSError):  # a bad config: Snakemake reports it with the key's name
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
