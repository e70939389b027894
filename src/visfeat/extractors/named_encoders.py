"""The named encoder presets (issue 25): one model of the `openclip` or `timm` family with its `model` (and
`pretrained`) options fixed and its hub file pinned to a commit and a sha256, as the catalog pins the originals'
URLs. The catalog registers each as a Preset of its family (same builder and env); extractors/hub.py fetches the
pinned file (`{endpoint}/{repo}/resolve/{revision}/{file}`, sha256-checked) for the named preset and for the
generic family given the same model, so one name means one file.

Every pinned value (commit, sha256, licence) was read, never computed: on a stored Hugging Face page, or in another
project's download catalog or lock file that names repo, commit, file and sha256 together; the source is named
beside each value. Torch-free data: the catalog and the hub module read it. Candidates still waiting for a pin:
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
    # Pins below were read in other projects' download catalogs and lock files, stored on GitHub, that name the
    # repo, the full commit, the file and its sha256 together and check the sha256 of what they download (no
    # stored hub page shows these files' "SHA256:"); a wrong value fails the fetch loudly.
    "siglip2-b16": NamedEncoder(
        family="openclip",
        options={"model": "ViT-B-16-SigLIP2", "pretrained": "webli"},
        sizes={"D": 768, "H": 14, "W": 14, "C": 768},  # 224 px, patch 16, map head: no prefix token
        summary="SigLIP 2 B/16 (open_clip ViT-B-16-SigLIP2, webli): encode_image embedding (not normalised), "
                "14x14 patch grid, text tower",
        # License: "Apache-2.0" in the catalog below
        license="apache-2.0",
        citation="Tschannen et al., SigLIP 2, arXiv:2502.14786",
        pin=HubPin(
            repo="timm/ViT-B-16-SigLIP2", file="open_clip_model.safetensors",
            # revision, size and sha256 of every file of the repo at that commit (tokenizer.json too), fetched by
            # `resolve/{revision}/{name}` and sha256-checked: the "siglip2" entry of
            # https://github.com/javajaga-usa/Ninaivu/blob/2a4eca16611cf8564fc28b5f54f759f4a8d4e8bc/ninaivu/media/model_catalog.py
            revision="eee10eff6dd8cabae2d7f379d4e8cfcd352030aa",
            sha256="d0a51069d2fa6c95b371b3bffd2a2c765c1815004798ee99f075290dbca73041", size=1500786832,
            tokenizer_revision="eee10eff6dd8cabae2d7f379d4e8cfcd352030aa"),  # open_clip's tokenizer repo: itself
    ),
    "siglip2-so400m16-384": NamedEncoder(
        family="openclip",
        options={"model": "ViT-SO400M-16-SigLIP2-384", "pretrained": "webli"},
        sizes={"D": 1152, "H": 24, "W": 24, "C": 1152},  # 384 px, patch 16, map head: no prefix token
        summary="SigLIP 2 SO400M/16 at 384 px (open_clip ViT-SO400M-16-SigLIP2-384, webli): encode_image "
                "embedding (not normalised), 24x24 patch grid, text tower",
        license="apache-2.0",  # as its B/16 sibling above
        citation="Tschannen et al., SigLIP 2, arXiv:2502.14786",
        pin=HubPin(
            repo="timm/ViT-SO400M-16-SigLIP2-384", file="open_clip_model.safetensors",
            # MODEL_HF_REVISION ("refs/main when the weights were fetched", 2026-08-02) and MODEL_WEIGHTS_SHA256
            # ("sha256 of the checkpoint file open_clip loaded") of
            # https://github.com/Sheraff/palette/blob/29eb4399adc2da54b45a3bbc1964b7eb495fbfb1/research/v3/oracle/embeddings/config.py
            revision="fec784dabb3081a5f101fc74eefaf9d1ed08237b",
            sha256="8ceec00df3c462d155d172933339cd9178a86bfab72f4458dbe84bd54f5ad026",
            # open_clip 3.3.0 names this repo its tokenizer (hf_tokenizer_name), so main held one then
            tokenizer_revision="fec784dabb3081a5f101fc74eefaf9d1ed08237b"),
    ),
    "pe-core-l14-336": NamedEncoder(
        family="openclip",
        options={"model": "PE-Core-L-14-336", "pretrained": "meta"},
        sizes={"D": 1024, "H": 24, "W": 24, "C": 1024, "P": 1},  # 336 px, patch 14, CLS
        summary="Perception Encoder Core L/14 at 336 px (open_clip PE-Core-L-14-336, meta): encode_image "
                "embedding (not normalised), 24x24 patch grid, CLS, text tower",
        # License: SOURCE_LICENSE of https://github.com/LibreYOLO/libreyolo/blob/809009bc294daa6e75e0976ab7cfdd0057d17d79/weights/convert_pe_weights.py
        license="apache-2.0",
        citation="Bolya et al., Perception Encoder, arXiv:2504.13181",
        pin=HubPin(
            repo="timm/PE-Core-L-14-336", file="open_clip_model.safetensors",
            # ARMS["pe-core-l14"] ("every weights hash computed with shasum -a 256 against the file the loader
            # opens") of the Sheraff/palette config.py named above; the same revision is pinned by the LibreYOLO
            # file named above
            revision="8eff41b3f687e50a323662c2dda5eb3588c6dd35",
            sha256="b1fff7093c32a01d98a2d82098f9adf788b30f0efee639916520b3e4302f786b"),
    ),
    "dinov3-b16": NamedEncoder(
        family="timm",
        options={"model": "vit_base_patch16_dinov3.lvd1689m"},
        sizes={"D": 768, "H": 16, "W": 16, "C": 768, "P": 5},  # 256 px, patch 16, CLS + 4 registers
        summary="DINOv3 ViT-B/16 (timm vit_base_patch16_dinov3.lvd1689m): pre-logits (timm averages the patch "
                "tokens), 16x16 patch grid, CLS + 4 registers",
        # License: every timm DINOv3 repo, e.g. https://huggingface.co/timm/vit_small_patch16_dinov3.lvd1689m/tree/main
        license="dinov3-license",
        citation="Simeoni et al., DINOv3, arXiv:2508.10104",
        pin=HubPin(
            repo="timm/vit_base_patch16_dinov3.lvd1689m", file="model.safetensors",
            # DINO_REPOSITORY / DINO_REVISION / DINO_SHA256 of a flex-pi RoboTwin inference script (it checks the
            # sha256 of model.safetensors downloaded at that revision); the same pair in four unrelated projects'
            # files (an OCD_OVMOT adapter, MediaSense docs, flex-pi setup scripts), all read in the code index
            revision="c6a5fb7d12bbd3cf3b0079253141c3332aaed7da",
            sha256="1f9ed8a2378d65e24bb710ba522ac9fa7be4e036d7aefb4384ce022833926332"),
    ),
    "dinov3-l16": NamedEncoder(
        family="timm",
        options={"model": "vit_large_patch16_dinov3.lvd1689m"},
        sizes={"D": 1024, "H": 16, "W": 16, "C": 1024, "P": 5},  # 256 px, patch 16, CLS + 4 registers
        summary="DINOv3 ViT-L/16 (timm vit_large_patch16_dinov3.lvd1689m): pre-logits (timm averages the patch "
                "tokens), 16x16 patch grid, CLS + 4 registers",
        license="dinov3-license",  # as dinov3-b16
        citation="Simeoni et al., DINOv3, arXiv:2508.10104",
        pin=HubPin(
            repo="timm/vit_large_patch16_dinov3.lvd1689m", file="model.safetensors",
            # REPOSITORY / REVISION / WEIGHT_SHA256 / WEIGHT_BYTES of a starVLA download script, which checks them
            # against the hub's own API at that revision (`lfs.sha256`, `size`) and the downloaded bytes; the
            # same pair in five other projects' files, all read in the code index
            revision="30c1109559f65dea34316b0d4842d35c5771fe11",
            sha256="45172f209c9583c40538afc26b60a07033e6fcc2e8c30228338e6b2e932e7941", size=1212347640),
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
