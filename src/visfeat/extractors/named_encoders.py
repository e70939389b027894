"""The named encoder presets (issue 25): one model of the `openclip` or `timm` family with its `model` (and
`pretrained`) options fixed and its hub file pinned to a commit and a sha256, as the catalog pins the originals'
URLs. The catalog registers each as a Preset of its family (same builder and env); extractors/hub.py fetches the
pinned file (`{endpoint}/{repo}/resolve/{revision}/{file}`, sha256-checked) for the named preset and for the
generic family given the same model, so one name means one file.

Every pinned value (commit, sha256, licence) was read on a stored Hugging Face page, named beside it; none is
computed. Torch-free data: the catalog and the hub module read it. Candidates still waiting for a pin:
`NAMED_PRESETS` in scripts/encoder_names.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from visfeat.extractors.encoder_names import check_openclip, check_timm


@dataclass(frozen=True)
class HubPin:
    """A hub file at a commit: what the fetch downloads and the sha256 it must have."""

    repo: str
    file: str
    revision: str  # a full commit id at which the file exists (its "Add model" commit or a later one)
    sha256: str  # the file's Git LFS oid
    size: int | None = None  # bytes, only where a page printed the exact count
    tokenizer_revision: str = ""  # the text tower's tokenizer repo at a commit (open_clip, where it has one)

    def url(self, endpoint: str) -> str:
        """The file at its commit on a hub (huggingface.co, a mirror, or 127.0.0.1 in tests)."""
        return f"{endpoint}/{self.repo}/resolve/{self.revision}/{self.file}"


@dataclass(frozen=True)
class NamedEncoder:
    family: str  # the generic preset that runs it: "openclip" or "timm"
    options: dict[str, str]  # the fixed options: model (+ open_clip's pretrained)
    sizes: dict[str, int]  # D (global), H, W, C (grid), P (prefix tokens, where the model has any)
    summary: str
    license: str
    citation: str
    pin: HubPin


NAMED: dict[str, NamedEncoder] = {
    "dinov2-b14": NamedEncoder(
        family="timm",
        options={"model": "vit_base_patch14_dinov2.lvd142m"},
        sizes={"D": 768, "H": 37, "W": 37, "C": 768, "P": 1},  # 518 px, patch 14, CLS
        summary="DINOv2 ViT-B/14 (timm vit_base_patch14_dinov2.lvd142m): CLS pre-logits, 37x37 patch grid, CLS",
        # License: https://huggingface.co/timm/vit_base_patch14_dinov2.lvd142m/tree/1926dc569694559b394898d7ba5d88a775301036
        license="apache-2.0",
        citation="Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024",
        pin=HubPin(
            repo="timm/vit_base_patch14_dinov2.lvd142m", file="model.safetensors",
            # the tree at this commit lists model.safetensors (last changed by "Add model" b999a3f):
            # https://huggingface.co/timm/vit_base_patch14_dinov2.lvd142m/tree/1926dc569694559b394898d7ba5d88a775301036
            revision="1926dc569694559b394898d7ba5d88a775301036",
            # "SHA256:" of https://huggingface.co/timm/vit_base_patch14_dinov2.lvd142m/blob/main/model.safetensors
            # (last commit "Add model" b999a3f, the same file; size shown as 346 MB only)
            sha256="55cbb5d887b336d430e649c277b85a1429e724871f9d02ac16203235886d8c7b"),
    ),
    "siglip-so400m14-384": NamedEncoder(
        family="openclip",
        options={"model": "ViT-SO400M-14-SigLIP-384", "pretrained": "webli"},
        sizes={"D": 1152, "H": 27, "W": 27, "C": 1152},  # 384 px, patch 14, map head: no prefix token
        summary="SigLIP SO400M/14 at 384 px (open_clip ViT-SO400M-14-SigLIP-384, webli): encode_image embedding "
                "(not normalised), 27x27 patch grid, text tower",
        # License: https://huggingface.co/timm/ViT-SO400M-14-SigLIP-384/tree/9a9cf937c9944727bd49787baa7ea78c1363a999
        license="apache-2.0",
        citation="Zhai et al., Sigmoid Loss for Language Image Pre-Training, ICCV 2023",
        pin=HubPin(
            repo="timm/ViT-SO400M-14-SigLIP-384", file="open_clip_model.safetensors",
            # the blob page at this commit ("Add model" 5fbd414 last changed the file), read for the sha256 too:
            # https://huggingface.co/timm/ViT-SO400M-14-SigLIP-384/blob/9a9cf937c9944727bd49787baa7ea78c1363a999/open_clip_model.safetensors
            revision="9a9cf937c9944727bd49787baa7ea78c1363a999",
            sha256="97faeafa0576c1ba4c92bae739ca06ef5f5d0c2db92f86a6086653d82a262043",  # size shown as 3.51 GB
            # the tokenizer repo open_clip names for this model (timm/ViT-B-16-SigLIP) at a commit holding
            # tokenizer.json: https://huggingface.co/timm/ViT-B-16-SigLIP/blob/41f575766f40e752fdd1383e9565b7f02388c1c4/tokenizer.json
            tokenizer_revision="41f575766f40e752fdd1383e9565b7f02388c1c4"),
    ),
    "eva02-clip-l14-336": NamedEncoder(
        family="openclip",
        options={"model": "EVA02-L-14-336", "pretrained": "merged2b_s6b_b61k"},
        sizes={"D": 768, "H": 24, "W": 24, "C": 1024, "P": 1},  # 336 px, patch 14, CLS
        summary="EVA02-CLIP L/14 at 336 px (open_clip EVA02-L-14-336, merged2b_s6b_b61k): encode_image embedding "
                "(not normalised), 24x24 patch grid, CLS, text tower",
        # License: https://huggingface.co/timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k/tree/4f62907359c8506be7021582f360564693b22c15
        license="mit",
        citation="Sun et al., EVA-CLIP: Improved Training Techniques for CLIP at Scale, arXiv:2303.15389",
        pin=HubPin(
            repo="timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k", file="open_clip_model.safetensors",
            # the blob page at this commit ("Add model" 735670c last changed the file), read for the sha256 too:
            # https://huggingface.co/timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k/blob/4f62907359c8506be7021582f360564693b22c15/open_clip_model.safetensors
            revision="4f62907359c8506be7021582f360564693b22c15",
            sha256="f753bca0e8327f77e8845b0af2510d599c3e4614237007b48078c791f2cf391c"),  # size shown as 856 MB
    ),
}

_FAMILY_CHECKS = {"openclip": check_openclip, "timm": check_timm}


def check_fixed(name: str, options: dict[str, Any]) -> None:
    """A named preset's check: its fixed options unchanged (another model is the family preset's job, with a
    file of its own), then the family's own check (layers)."""
    n = NAMED[name]
    for key, value in n.options.items():
        if options.get(key) != value:
            raise ValueError(f"preset {name} is {n.family} {key}={value} with a pinned weights file: {key} is "
                             f"fixed; for another one use preset {n.family} (--set {key}={options.get(key)})")
    _FAMILY_CHECKS[n.family](options)


def __getattr__(attr: str):
    """`check_<name>` for each named preset: the `Preset.check` the catalog names ("module:function" strings)."""
    name = attr.removeprefix("check_")
    if attr.startswith("check_") and name in NAMED:
        return lambda options: check_fixed(name, options)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
