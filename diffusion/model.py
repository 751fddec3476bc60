"""Loading the base Stable Diffusion 1.x model: one loader for `lora` and `generate`.

Accepted: a local diffusers folder (model_index.json), a single-file `.safetensors`
checkpoint (AUTOMATIC1111/CivitAI style), or a hub id such as
`stable-diffusion-v1-5/stable-diffusion-v1-5` (where a hub is reachable, or
already in the local cache). Pickle checkpoints (`.ckpt`, `.bin`, `.pt`, `.pth`)
can run code when loaded and are refused unless `allow_pickle`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from prompts.errors import UserError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

NO_MODEL_HELP = (
    "pass --model with a diffusers folder, a single-file .safetensors checkpoint or a hub id "
    "(offline: `python -m lora tiny-model models/tiny-sd` writes a smoke model)"
)


def check_diffusers_folder(folder: Path, allow_pickle: bool) -> None:
    """A Stable Diffusion folder has model_index.json naming its components, with safetensors weights."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(f"{folder} is not a Stable Diffusion model: no model_index.json; {NO_MODEL_HELP}")
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{index} is not valid JSON: {err}") from None
    missing = [c for c in SD_COMPONENTS if c not in components or not (folder / c).is_dir()]
    if missing:
        raise UserError(f"{folder} is not a Stable Diffusion 1.x model: missing component(s) {', '.join(missing)}")
    for part in ("unet", "vae", "text_encoder"):
        files = [p.name for p in (folder / part).iterdir()]
        if not any(f.endswith(".safetensors") for f in files):
            if any(f.endswith(PICKLE_SUFFIXES) for f in files) and not allow_pickle:
                raise UserError(
                    f"{folder / part} holds only pickle weights (.bin), which can run code when loaded; "
                    "convert them to safetensors or pass --allow-pickle if you trust the source"
                )
            if not any(f.endswith(PICKLE_SUFFIXES) for f in files):
                raise UserError(f"{folder / part} holds no weights file")


def load_pipeline(
    model: str | os.PathLike | None,
    *,
    torch_dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    config: str | os.PathLike | None = None,
):
    """Load a `StableDiffusionPipeline` from a folder, a single file or a hub id.

    config: for a single-file checkpoint, a diffusers folder (or hub id) with the
    same architecture, whose component configs are used; without it diffusers
    fetches SD 1.x's configs from the hub (not possible offline).
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    kind, ref = check_model(model, allow_pickle)
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" per load: our logs say what loads
    if kind == "folder":
        return StableDiffusionPipeline.from_pretrained(
            ref, torch_dtype=torch_dtype, use_safetensors=not allow_pickle or None, safety_checker=None,
            requires_safety_checker=False,
        )
    if kind == "file":
        return load_single_file(ref, torch_dtype=torch_dtype, config=config)
    return _load_from_hub(str(ref), torch_dtype)


def check_model(model: str | os.PathLike | None, allow_pickle: bool = False) -> tuple[str, Path | str]:
    """The cheap checks of `load_pipeline`, without loading: ('folder'|'file'|'hub', path or id).

    Raises UserError for a missing path, a folder that is not a diffusers SD model, a file
    that is not a checkpoint, or a pickle checkpoint without `allow_pickle`.
    """
    if model is None or str(model) == "":
        raise UserError(f"no base model given; {NO_MODEL_HELP}")
    path = Path(model)
    if path.is_dir():
        check_diffusers_folder(path, allow_pickle)
        return "folder", path
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise UserError(
                f"{path} is a pickle checkpoint, which can run code when loaded; use a .safetensors file "
                "or pass --allow-pickle if you trust the source"
            )
        if suffix not in PICKLE_SUFFIXES + (".safetensors",):
            raise UserError(f"{path} is not a model checkpoint (.safetensors) or diffusers folder; {NO_MODEL_HELP}")
        if suffix == ".safetensors":
            _check_single_file_keys(path)
        return "file", path
    if _HUB_ID.match(str(model)) and not str(model).startswith((".", "/")):
        return "hub", str(model)
    raise UserError(f"model {model} does not exist; {NO_MODEL_HELP}")


def _check_single_file_keys(path: Path) -> None:
    """A single-file SD 1.x checkpoint has U-Net keys `model.diffusion_model.*` (read from the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:  # safetensors raises its own error types
        raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0][:120]}); {NO_MODEL_HELP}") from None
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        hint = " (it looks like a LoRA: pass it as a LoRA, not as --model)" if any("lora" in k for k in keys[:50]) else ""
        raise UserError(f"{path} is not a Stable Diffusion 1.x checkpoint: no model.diffusion_model.* keys{hint}; {NO_MODEL_HELP}")


def load_single_file(path: Path, *, torch_dtype: torch.dtype, config=None):
    """A single-file SD 1.x checkpoint (original LDM key layout)."""
    from diffusers import StableDiffusionPipeline

    kwargs = {"torch_dtype": torch_dtype, "safety_checker": None, "requires_safety_checker": False}
    if config is not None:
        kwargs["config"] = str(config)
    try:
        return StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise UserError(
            f"cannot load {path} as a Stable Diffusion 1.x checkpoint ({first[:200]}); offline, pass --model-config "
            "with a local diffusers folder of the same architecture"
        ) from None


def _load_from_hub(repo_id: str, torch_dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    try:
        return StableDiffusionPipeline.from_pretrained(
            repo_id, torch_dtype=torch_dtype, use_safetensors=True, safety_checker=None, requires_safety_checker=False
        )
    except Exception as err:  # huggingface_hub raises several unrelated types offline
        raise UserError(
            f"cannot load {repo_id} from the hub ({err.__class__.__name__}); offline, download it where a hub is "
            "reachable (`huggingface-cli download " + repo_id + " --local-dir DIR`) and pass --model DIR"
        ) from None


def model_hash(model: str | os.PathLike) -> str:
    """AUTOMATIC1111's short model hash: the first 10 hex digits of the checkpoint's SHA-256.

    For a diffusers folder, the hash of its U-Net weights file stands in. The SHA-256 comes from
    `prompts.fingerprint.file_sha256`: computed once per file version (real path, size, mtime) and
    recorded in the per-user hash cache, so every LoRA and generation job of a study (and of the next
    study on the same model) reuses it instead of reading gigabytes again.
    """
    from prompts.fingerprint import file_sha256

    path = Path(model)
    if path.is_file():
        return file_sha256(path)[:10]
    if path.is_dir():
        weights = sorted((path / "unet").glob("*.safetensors")) or sorted((path / "unet").glob("*"))
        if weights:
            return file_sha256(weights[0])[:10]
    return str(model).replace("/", "_")[:10]


# Stable Diffusion 1.5's published component configs (stable-diffusion-v1-5 unet/, vae/, text_encoder/
# config.json): the one copy, used by the benchmarks and the key-set tests to build the architecture
# with random weights (or on the `meta` device) without downloading anything.
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, sample_size=512,
)
SD15_TEXT_CONFIG = dict(  # CLIP ViT-L/14's text tower
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, vocab_size=49408,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
    pad_token_id=49407,
)


def build_sd15(device: str | torch.device = "meta", *, vae: bool = False, **text_ids):
    """SD 1.5's U-Net and CLIP text encoder (and VAE) with random weights, on `device`.

    device 'meta': shapes only, no memory and no time (for key sets). text_ids overrides
    bos/eos/pad token ids (a smaller tokenizer's ids fit SD 1.5's vocabulary).
    Returns (unet, text_encoder, vae or None).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**{**SD15_TEXT_CONFIG, **text_ids}))
        autoencoder = AutoencoderKL(**SD15_VAE_CONFIG) if vae else None
    return unet, text, autoencoder
