"""Write src/visfeat/extractors/data/encoder_names.json: the open_clip and timm names the installed (pinned)
libraries know, so config validation and the workflow check names and find hub files without importing torch.

    python scripts/encoder_names.py          # regenerate (after bumping open_clip_torch or timm)
    python scripts/encoder_names.py --check  # exit 1 when the file differs (tests/test_encoder_names.py)

open_clip: every architecture (`list_models`) with its pretrained tags; per tag the hub location exactly as
open_clip's pretrained cfg writes it (`hf_hub`: "org/repo/" or "org/repo/file") and the tag's preprocessing
(size from the model config; mean, std, interpolation, resize_mode, quick_gelu where set) and the hub
repo of its Hugging Face tokenizer where the text tower has one. timm: every pretrained name (`list_pretrained`, "arch.tag")
and, only where it is not "timm/<name>", its `hf_hub_id`; names without a hub id keep their URL. Preprocessing of
timm names is not stored: the builders read it from timm itself, and the file stays small.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "visfeat" / "extractors" / "data" / "encoder_names.json"

# The named presets visfeat would register once their hub files' pinned revision and sha256 are read from the hub
# (this machine cannot reach it): name -> (library, model, tag, dims of `global`, input size, licence, citation).
# Dims and input sizes read from the pinned libraries; licences from the model cards (timm's pretrained cfg
# `license` where it has one). Until then the generic presets `openclip` / `timm` serve each one by name. The ones
# with a pin are registered from src/visfeat/extractors/named_encoders.py and are no longer listed here.
NAMED_PRESETS: dict[str, tuple[str, str, str, int, int, str, str]] = {
    "metaclip2-h14": ("open_clip", "ViT-H-14-worldwide", "metaclip2_worldwide", 1024, 224, "cc-by-nc-4.0",
                      "Chuang et al., Meta CLIP 2: A Worldwide Scaling Recipe, arXiv:2507.22062"),
    # licence: https://huggingface.co/timm/vit_large_patch14_reg4_dinov2.lvd142m/tree/7626c8e2d0172194c8ed40aebf683adbb46a5f93
    # (model.safetensors there; its sha256 not found on a stored page)
    "dinov2-l14-reg": ("timm", "vit_large_patch14_reg4_dinov2", "lvd142m", 1024, 518, "apache-2.0",
                       "Darcet et al., Vision Transformers Need Registers, ICLR 2024"),
    # licence: https://huggingface.co/timm/aimv2_large_patch14_224.apple_pt/commits/main (commit ids there short only)
    "aimv2-l14-224": ("timm", "aimv2_large_patch14_224", "apple_pt", 1024, 224, "apple-ascl",
                      "Fini et al., Multimodal Autoregressive Pre-training of Large Vision Encoders, CVPR 2025"),
    "c-radiov4-so400m": ("timm", "naflexvit_so400m_patch16_radio_v4", "c_radio", 1152, 512,
                         "nvidia-open-model-license",
                         "Ranzinger et al., AM-RADIO: Agglomerative Vision Foundation Model, CVPR 2024"),
}


def generate() -> dict:
    """The name list from the installed libraries (torch is imported here, never where the list is read)."""
    import open_clip
    import timm
    from open_clip.pretrained import get_pretrained_cfg as openclip_cfg

    models: dict[str, dict] = {m: {} for m in open_clip.list_models()}
    for model, tag in open_clip.list_pretrained():
        c = openclip_cfg(model, tag)
        entry = {"hf_hub": c.get("hf_hub", ""), "size": open_clip.get_model_config(model)["vision_cfg"]["image_size"],
                 "mean": list(c["mean"]), "std": list(c["std"]), "interpolation": c["interpolation"],
                 "resize_mode": c["resize_mode"]}
        tokenizer = open_clip.get_model_config(model).get("text_cfg", {}).get("hf_tokenizer_name")
        if tokenizer:
            entry["tokenizer"] = tokenizer
        if c.get("quick_gelu"):
            entry["quick_gelu"] = True
        if c.get("url") and not entry["hf_hub"]:
            entry["url"] = c["url"]
        models.setdefault(model, {})[tag] = entry
    names, hub, urls = [], {}, {}
    for name in timm.list_pretrained():
        c = timm.get_pretrained_cfg(name)
        names.append(name)
        if not c.hf_hub_id:
            urls[name] = c.url or ""
        elif c.hf_hub_id != f"timm/{name}":
            hub[name] = c.hf_hub_id
    return {"versions": {"open_clip_torch": open_clip.__version__, "timm": timm.__version__},
            "open_clip": models, "timm": {"names": sorted(names), "hf_hub_id": hub, "url": urls}}


def dumps(data: dict) -> str:
    """Sorted JSON with one open_clip tag or timm name per line: small, and a version bump diffs readably."""
    def one(v) -> str:
        return json.dumps(v, sort_keys=True, separators=(",", ":"))

    def block(d: dict, indent: str) -> str:
        return "{\n" + ",\n".join(f"{indent}{one(k)}:{one(v)}" for k, v in sorted(d.items())) + "}"

    oc = data["open_clip"]
    lines = ["{", f'"versions":{one(data["versions"])},', '"open_clip":{']
    lines.append(",\n".join(f" {one(m)}:{block(oc[m], '  ') if oc[m] else '{}'}" for m in sorted(oc)) + "},")
    t = data["timm"]
    lines.append('"timm":{"names":[\n' + ",\n".join(one(n) for n in t["names"]) + "],")
    lines.append(f'"hf_hub_id":{block(t["hf_hub_id"], " ")},')
    lines.append(f'"url":{block(t["url"], " ")}}}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is out of date")
    a = ap.parse_args(argv)
    text = dumps(generate())
    if OUT.exists() and OUT.read_text(encoding="utf-8") == text:
        return 0
    if a.check:
        print(f"{OUT}: out of date for the installed open_clip/timm; run python scripts/encoder_names.py",
              file=sys.stderr)
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"{OUT.name}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
