"""The `openclip` family's text with a Hugging Face tokenizer (SigLIP, SigLIP 2), offline, against open_clip.

Each model is a tiny random SigLIP-family architecture (its real config's text tower shrunk: no causal mask, last-token
pool, projection bias, `clean: canonicalize`; a shrunk timm SigLIP trunk with the map head), saved as the hub file
(open_clip_model.safetensors). Its tokenizer is trained here with the `tokenizers` library and saved as the files the
SigLIP hub repos hold (tokenizer.json, tokenizer_config.json, special_tokens_map.json) beside the weights, where the
weights fetch places them: SigLIP's T5-style Unigram and SigLIP 2's Gemma-style BPE, each with its real
`tokenizer_class`. Nothing is downloaded: the hub client is offline for the whole module.
"""
import copy
import json

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import timm
import torch
from helpers.tiny_models import register_tiny_openclip
from open_clip import pretrained as oc_pretrained
from open_clip.tokenizer import HFTokenizer
from timm.models import register_model
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

import visfeat
from visfeat.extractors.openclip import TOKENIZER_FILES

TAG = "tiny"
CONTEXT = 12  # shorter than the last caption: truncation is exercised
VOCAB = 128  # the text tower's embedding rows; the trained vocabularies stay below it
CAPTIONS = ["A cat sitting on a sofa.", "two espresso cups", "",
            "A rocket on its launch pad at dusk, two espresso cups and a cat sitting on the sofa!"]
CORPUS = ["a cat sitting on a sofa", "two espresso cups on a table", "a rocket on its launch pad at dusk",
          "a photo of a dog", "the quick brown fox jumps over the lazy dog"]
TRUNK = "visfeat_tiny_siglip_text"
# tiny model -> (the real SigLIP-family model its config shrinks, its real tag, tokenizer style)
MODELS = {"visfeat-tiny-siglip-text": ("ViT-B-16-SigLIP", "webli", "t5"),
          "visfeat-tiny-siglip2-text": ("ViT-B-16-SigLIP2", "webli", "gemma")}


def _trunk(pretrained=False, **kw):
    return timm.create_model("vit_base_patch16_siglip_224", pretrained=False,
                             **{"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32, **kw})


_trunk.__name__ = TRUNK
if TRUNK not in timm.list_models(TRUNK):
    register_model(_trunk)


def save_tokenizer(style: str, folder) -> Tokenizer:
    """A small vocabulary in the layout of the SigLIP hub repos' tokenizer files: T5's (SigLIP: Unigram over
    Metaspace pieces, `</s>` appended) or Gemma's (SigLIP 2: BPE over `▁`-joined text, `<eos>` appended)."""
    if style == "t5":
        specials, eos, cls = ["<pad>", "</s>", "<unk>"], "</s>", "T5Tokenizer"
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=specials, unk_token="<unk>")
        extra = {"extra_ids": 0}
    else:
        specials, eos, cls = ["<pad>", "<eos>", "<bos>", "<unk>"], "<eos>", "GemmaTokenizer"
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Replace("▁", " ")
        trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=specials, max_token_length=4)
        extra = {"add_bos_token": False, "add_eos_token": True, "bos_token": "<bos>"}
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))])
    assert tok.get_vocab_size() <= VOCAB
    tok.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": eos, "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, **({"bos_token": "<bos>"} if "bos_token"
                                                                                 in extra else {})}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls, **special, **extra,
                                                              "model_max_length": CONTEXT, "padding_side": "right"}))
    return tok


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The hub client offline (it reads HF_HUB_OFFLINE once, at import: the constant is what it checks)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> (weights file with the tokenizer files beside it, the tokenizer), the tiny tag registered."""
    d = tmp_path_factory.mktemp("openclip_text")
    out = {}
    for name, (real, real_tag, style) in MODELS.items():
        cfg = copy.deepcopy(open_clip.get_model_config(real))
        cfg["embed_dim"] = 32
        cfg["vision_cfg"].update(image_size=32, timm_model_name=TRUNK)
        cfg["text_cfg"].update(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=1)
        path = register_tiny_openclip(d, name, cfg, real, real_tag, TAG)
        out[name] = (path, save_tokenizer(style, path.parent))
    yield out
    for name in MODELS:
        oc_pretrained._PRETRAINED.pop(name, None)


@pytest.mark.parametrize("name", list(MODELS))
def test_text_equals_the_librarys_on_the_files_beside_the_weights(name, tiny, tmp_path):
    """load_extractor's `encode_text` and `visfeat text` equal open_clip's own HFTokenizer on the same files +
    `model.encode_text` (fp32, exactly); the caption longer than the context is truncated the same way."""
    import h5py

    from visfeat.cli import main

    path, tok = tiny[name]
    text_cfg = open_clip.get_model_config(name)["text_cfg"]
    assert text_cfg["hf_tokenizer_name"].startswith("timm/")  # the hub repo's name: the local files must win
    assert len(tok.encode(open_clip.tokenizer.canonicalize_text(CAPTIONS[-1])).ids) > CONTEXT
    ex = visfeat.load_extractor("openclip", weights=str(path), device="cpu", model=name, pretrained=TAG)
    ref_tok = HFTokenizer(str(path.parent), context_length=text_cfg["context_length"],
                          **text_cfg["tokenizer_kwargs"])
    assert type(ex.tokenizer().tokenizer) is type(ref_tok.tokenizer)  # T5Tokenizer / GemmaTokenizer
    tokens = ref_tok(CAPTIONS)
    assert tokens.shape == (len(CAPTIONS), CONTEXT)
    hf = ref_tok.tokenizer  # the long caption: cut to the context, no padding, its end token kept
    assert (tokens[-1] != hf.pad_token_id).all() and tokens[-1, -1] == hf.eos_token_id
    assert torch.equal(ex.tokenizer()(CAPTIONS), tokens)
    model = open_clip.create_model(name, pretrained=TAG).eval()
    with torch.no_grad():
        ref = model.encode_text(tokens).numpy()
    got = ex.encode_text(CAPTIONS)
    assert np.abs(got - ref).max() == 0
    assert len(np.unique(got.round(6), axis=0)) == len(CAPTIONS)  # distinct captions, distinct embeddings

    listed = [c for c in CAPTIONS if c]  # a captions file has no empty caption
    with torch.no_grad():
        ref = model.encode_text(ref_tok(listed)).numpy()
    (tmp_path / "caps.txt").write_text("".join(f"img{i}\t{c}\n" for i, c in enumerate(listed)))
    assert main(["text", "--preset", "openclip", "--weights", str(path), "--captions", str(tmp_path / "caps.txt"),
                 "--out", str(tmp_path / "t.h5"), "--device", "cpu", "--set", f"model={name}",
                 "--set", f"pretrained={TAG}"]) == 0
    with h5py.File(tmp_path / "t.h5") as f:
        assert np.abs(f["text"][:] - ref).max() == 0


def test_missing_tokenizer_files_named_with_the_folder(tiny, tmp_path):
    """Weights without the tokenizer files beside them, offline: the error names the files and the folder."""
    name = "visfeat-tiny-siglip2-text"
    path = tmp_path / "open_clip_model.safetensors"
    path.write_bytes(tiny[name][0].read_bytes())
    ex = visfeat.load_extractor("openclip", weights=str(path), device="cpu", model=name, pretrained=TAG)
    with pytest.raises(RuntimeError) as e:
        ex.encode_text(CAPTIONS)
    msg = str(e.value)
    assert all(f in msg for f in TOKENIZER_FILES) and str(tmp_path) in msg, msg
