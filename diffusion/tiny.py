"""A tiny Stable Diffusion 1.x with random weights, for tests and the offline demo.

It has SD 1.x's architecture family (VAE with 8x downsampling, cross-attention
U-Net, CLIP text encoder and byte-level BPE tokenizer, PNDM scheduler config of
SD 1.5) at a few hundred thousand parameters, so that the whole toolkit runs on
a CPU in seconds. It is a smoke model: its images are noise-like, not micrographs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from prompts.errors import UserError
from prompts.files import temp_dir_beside


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte-to-unicode table (the same as GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# Words that get a token of their own, so that typical prompts fit CLIP's 77 tokens
# (the default templates, A1111 habits, microscopy terms); other text falls back to bytes.
_EXTRA_WORDS = (
    "a an and of in on with the photo image cell cells culture microscopy micrograph brightfield "
    "phase contrast fluorescence healthy unhealthy normal abnormal spheroid organoid monolayer "
    "lymphocyte monocyte neutrophil spherocyte target good acceptable bad sks"
)


def _train_bpe(words: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE training (Sennrich et al.): merge the most frequent adjacent pair, repeatedly.

    Words are sequences of byte-level characters ending in `</w>`, as CLIP tokenizes them.
    """
    from collections import Counter

    corpus = Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words if w)
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for word, freq in corpus.items():
            for a, b in zip(word, word[1:]):
                pairs[a, b] += freq
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        merged = Counter()
        for word, freq in corpus.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        corpus = merged
    return merges


def _corpus_words() -> list[str]:
    import re

    from prompts.templates import DEFAULT_TEMPLATES

    text = DEFAULT_TEMPLATES.read_text(encoding="utf-8").lower() + " " + _EXTRA_WORDS
    text = re.sub(r"#.*", " ", text)
    return re.findall(r"[a-z]+|[0-9]", text)


def write_tiny_tokenizer(folder: Path) -> int:
    """A small byte-level BPE CLIP tokenizer trained on prompt vocabulary; returns its vocab size."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = _train_bpe(_corpus_words(), n_merges=600)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return len(vocab)


def build_tiny_pipeline(seed: int = 0):
    """A `StableDiffusionPipeline` with tiny random components (8x VAE, 2-level U-Net)."""
    import tempfile

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_tiny_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    # SD 1.5's scheduler config.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_model(out: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny model in diffusers layout (safetensors) to `out`; returns the folder.

    An existing tiny model there is kept (re-runs are free) unless `overwrite`.
    The folder appears atomically: it is built beside `out` and renamed into place.
    """
    import shutil

    out = Path(out)
    if (out / "model_index.json").is_file() and not overwrite:
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / "model_index.json").is_file():
        raise UserError(f"{out} exists and is not a diffusers model folder; choose a new folder")
    tmp = temp_dir_beside(out, prefix=f".{out.name}.")
    try:
        build_tiny_pipeline(seed).save_pretrained(tmp, safe_serialization=True)
        from prompts.layout import TINY_MODEL_MARKER

        (Path(tmp) / TINY_MODEL_MARKER).write_text("tiny Stable Diffusion with random weights (python -m lora tiny-model): a smoke model\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
