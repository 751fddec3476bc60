"""LoRA file formats: diffusers/peft and kohya/AUTOMATIC1111, both directions, deltas preserved.

One in-memory form sits between them, `LoraWeights`: for every adapted module,
`down` (A, shape [rank, in]), `up` (B, shape [out, rank]) and `alpha`; the module's
weight change is `delta = alpha / rank * up @ down` (shape [out, in]).

diffusers file (`pytorch_lora_weights.safetensors`)
    keys `unet.<module>.lora_A.weight` / `.lora_B.weight` and `text_encoder.<module>...`;
    metadata `lora_adapter_metadata` = JSON of each component's peft `LoraConfig`
    (rank, alpha, rank/alpha patterns) so that `load_lora_weights` reloads the scale.
kohya / A1111 file (`<group>.safetensors`)
    keys `lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`, `.alpha`
    (and `lora_te_...` for the CLIP text encoder); `ss_*` training metadata and
    `sshs_model_hash` / `sshs_legacy_hash` as kohya's sd-scripts write them.

API: `read_lora(path)`, `write_diffusers(lora, folder)`, `write_kohya(lora, path, metadata)`,
`convert(src, dst, to)`, `from_peft(unet, text_encoder)`, `deltas(lora)`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prompts.errors import UserError
from prompts.files import atomic_path
from prompts.fingerprint import WRITTEN_BY

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMPONENTS = {"unet": "lora_unet_", "text_encoder": "lora_te_"}

# Names in diffusers' UNet2DConditionModel and transformers' CLIPTextModel that
# contain "_"; kohya joins module paths with "_", so these are re-joined greedily.
_COMPOUND = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
    "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out",
    "time_embedding", "linear_1", "linear_2", "text_model", "self_attn", "q_proj", "k_proj", "v_proj",
    "out_proj", "layer_norm1", "layer_norm2", "final_layer_norm", "token_embedding", "position_embedding",
    "add_embedding", "add_k_proj", "add_v_proj",
}


@dataclass
class LoraModule:
    """One adapted layer: down [rank, in(, kh, kw)], up [out, rank(, 1, 1)], alpha (the update is alpha/rank * up@down)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        """The LoRA rank: rows of the down projection."""
        return int(self.down.shape[0])

    def delta(self) -> torch.Tensor:
        """The weight change in float32, shaped like the layer's weight."""
        down = self.down.float().flatten(1)
        up = self.up.float().flatten(1)
        d = (self.alpha / self.rank) * (up @ down)
        return d.reshape(self.up.shape[0], *self.down.shape[1:]) if self.down.ndim == 4 else d


@dataclass
class LoraWeights:
    """All adapted modules, keyed by (component, module path), component `unet` or `text_encoder`."""

    modules: dict[tuple[str, str], LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)

    def component(self, name: str) -> dict[str, LoraModule]:
        """{module path: LoraModule} of one component (`unet` or `text_encoder`)."""
        return {m: mod for (c, m), mod in self.modules.items() if c == name}

    def rank_alpha(self) -> tuple[int, float]:
        """The most common (rank, alpha) pair: the network dim and alpha of the file."""
        return Counter((m.rank, m.alpha) for m in self.modules.values()).most_common(1)[0][0]


def deltas(lora: LoraWeights) -> dict[tuple[str, str], torch.Tensor]:
    """Every module's weight change, float32."""
    return {k: m.delta() for k, m in lora.modules.items()}


# --------------------------------------------------------------------------- which modules a network adapts

# kohya sd-scripts `networks/lora.py` (LoRANetwork) for SD 1.x: every Linear and Conv2d inside these
# blocks is adapted; 1x1 convolutions and Linear layers at the network rank, 3x3 convolutions only
# with conv_dim (LoCon), at conv_dim. The block lists are kohya's (CLIPSdpaAttention: its older name).
KOHYA_UNET_BLOCKS = ("Transformer2DModel",)
KOHYA_UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
KOHYA_TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
# The `attention` preset: the attention projections only (diffusers' example trainer's set).
ATTENTION_UNET = ("to_q", "to_k", "to_v", "to_out.0")
ATTENTION_TEXT_ENCODER = ("q_proj", "k_proj", "v_proj", "out_proj")
NETWORKS = ("kohya", "attention")


def _kohya_children(model, blocks: tuple[str, ...]) -> dict[str, str]:
    """{module path: 'linear' | 'conv1x1' | 'conv'} of every Linear/Conv2d inside a block of the given classes.

    The rule of sd-scripts' `create_modules` (blocks by class name). A model that already carries
    peft adapters gives the same answer: a wrapped layer counts by its `base_layer`, LoRA factors not at all.
    """
    found = {}
    for name, block in model.named_modules():
        if block.__class__.__name__ not in blocks:
            continue
        for child_name, child in block.named_modules():
            parts = child_name.split(".")
            if any(p.startswith("lora_") for p in parts):
                continue
            path = f"{name}.{child_name.removesuffix('.base_layer')}"
            if isinstance(child, torch.nn.Linear):
                found[path] = "linear"
            elif isinstance(child, torch.nn.Conv2d):
                found[path] = "conv1x1" if tuple(child.kernel_size) == (1, 1) else "conv"
    return found


def network_modules(unet, text_encoder, network: str = "kohya", conv_dim: int = 0) -> dict[tuple[str, str], str]:
    """The modules a network preset adapts: {(component, module path): 'linear' | 'conv1x1' | 'conv'}.

    `kohya`: sd-scripts' `networks.lora` for SD 1.x (U-Net transformer blocks: proj_in/out, attn1/attn2
    q/k/v/out, ff.net.0.proj, ff.net.2; CLIP attention q/k/v/out and mlp fc1/fc2); with conv_dim > 0
    also every Linear/Conv2d of the ResNet blocks and down/up-samplers (kohya's LoCon). conv_dim 0
    means kohya's conv_dim unset. `attention`: U-Net to_q/k/v/out.0 and CLIP q/k/v/out_proj only.
    text_encoder None: U-Net only.
    """
    if network not in NETWORKS:
        raise UserError(f"--network {network}: expected one of {', '.join(NETWORKS)}")
    out: dict[tuple[str, str], str] = {}
    if network == "attention":
        if conv_dim:
            raise UserError("--conv-dim needs --network kohya (the attention preset adapts no convolution)")
        for comp, model, suffixes in (("unet", unet, ATTENTION_UNET), ("text_encoder", text_encoder, ATTENTION_TEXT_ENCODER)):
            if model is None:
                continue
            for name, module in model.named_modules():
                if module.__class__.__name__ == "Linear" and name.endswith(tuple("." + s for s in suffixes)):
                    out[(comp, name)] = "linear"
        return out
    unet_blocks = KOHYA_UNET_BLOCKS + (KOHYA_UNET_CONV_BLOCKS if conv_dim else ())
    out.update({("unet", n): k for n, k in _kohya_children(unet, unet_blocks).items()})
    if text_encoder is not None:
        out.update({("text_encoder", n): k for n, k in _kohya_children(text_encoder, KOHYA_TEXT_ENCODER_BLOCKS).items()})
    return out


def network_args(network: str, conv_dim: int = 0, conv_alpha: float | None = None) -> dict[str, str]:
    """kohya's `ss_network_args` (its --network_args as strings) plus the preset's name."""
    args = {"preset": network}
    if network == "attention":
        args["unet_targets"] = ",".join(ATTENTION_UNET)
        args["text_encoder_targets"] = ",".join(ATTENTION_TEXT_ENCODER)
    if conv_dim:
        args["conv_dim"] = str(conv_dim)
        args["conv_alpha"] = str(kohya_conv_alpha(conv_dim, conv_alpha))
    return args


def kohya_conv_alpha(conv_dim: int, conv_alpha: float | None) -> float:
    """sd-scripts' default: with conv_dim given and conv_alpha not, conv_alpha is 1.0."""
    return 1.0 if conv_alpha is None else float(conv_alpha)

def peft_config(kinds: dict[str, str], rank: int, alpha: float, conv_dim: int = 0, conv_alpha: float | None = None):
    """A peft `LoraConfig` adapting exactly the modules of `kinds` ({module path: kind} of one component).

    Linear and 1x1 conv layers get (rank, alpha); 3x3 convs (kind 'conv') get (conv_dim, conv alpha) through
    peft's rank/alpha patterns, as kohya's LoCon does. A: Kaiming-uniform, B: zeros (kohya's init too).
    """
    from peft import LoraConfig

    convs = sorted(n for n, k in kinds.items() if k == "conv")
    c_alpha = kohya_conv_alpha(conv_dim, conv_alpha)
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(kinds), init_lora_weights=True,
                      rank_pattern={n: conv_dim for n in convs}, alpha_pattern={n: c_alpha for n in convs})

# --------------------------------------------------------------------------- peft models -> LoraWeights

def _peft_modules(model, component: str, adapter: str = "default") -> dict[tuple[str, str], LoraModule]:
    """LoRA layers of one adapter of a peft-adapted model, copied to float32 on the CPU."""
    from peft.tuners.lora import LoraLayer

    model = getattr(model, "module", model)  # unwrap DDP
    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
            out[(component, name)] = LoraModule(
                down=layer.lora_A[adapter].weight.detach().float().cpu().clone(),
                up=layer.lora_B[adapter].weight.detach().float().cpu().clone(),
                alpha=float(layer.lora_alpha[adapter]),
            )
    return out


def from_peft(unet, text_encoder=None, metadata: dict | None = None, adapter: str = "default") -> LoraWeights:
    """The trained LoRA of a U-Net (and optionally a text encoder) that carry peft adapters (the one named `adapter`)."""
    modules = _peft_modules(unet, "unet", adapter)
    if text_encoder is not None:
        modules.update(_peft_modules(text_encoder, "text_encoder", adapter))
    return LoraWeights(modules, dict(metadata or {}))


# --------------------------------------------------------------------------- diffusers format

def _lora_config(mods: dict[str, LoraModule]) -> dict:
    """A peft LoraConfig (as JSON-ready dict) that reproduces every module's rank and alpha."""
    from peft import LoraConfig

    r, alpha = Counter((m.rank, m.alpha) for m in mods.values()).most_common(1)[0][0]
    rank_pattern = {name: m.rank for name, m in mods.items() if m.rank != r}
    alpha_pattern = {name: m.alpha for name, m in mods.items() if m.alpha != alpha}
    targets = sorted(mods)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, rank_pattern=rank_pattern,
                     alpha_pattern=alpha_pattern, init_lora_weights=True).to_dict()
    return json.loads(json.dumps(cfg, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))


def write_diffusers(lora: LoraWeights, folder: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write `pytorch_lora_weights.safetensors` into `folder` with diffusers' own saver and rank/alpha metadata.

    `metadata` (e.g. the toolkit's `written_by` mark) is added to the header before the file is renamed into place.
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    layers, meta = {}, {}
    for comp in COMPONENTS:
        mods = lora.component(comp)
        if not mods:
            continue
        state = {}
        for name, m in mods.items():
            state[f"{name}.lora_A.weight"] = m.down.contiguous()
            state[f"{name}.lora_B.weight"] = m.up.contiguous()
        layers[comp], meta[comp] = state, _lora_config(mods)
    if not layers:
        raise UserError("the LoRA holds no U-Net or text-encoder layers; nothing to write")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / DIFFUSERS_WEIGHT_NAME) as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp.parent, unet_lora_layers=layers.get("unet"), text_encoder_lora_layers=layers.get("text_encoder"),
            unet_lora_adapter_metadata=meta.get("unet"), text_encoder_lora_adapter_metadata=meta.get("text_encoder"),
            weight_name=tmp.name, safe_serialization=True,
        )
        if metadata:
            _add_metadata(tmp, metadata)
        else:
            canonicalize_file(tmp)
    return folder / DIFFUSERS_WEIGHT_NAME


def _add_metadata(path: Path, extra: dict[str, str]) -> None:
    """Rewrite a safetensors file in place with `extra` keys added to its header (LoRA files are small)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata() or {})
    save_safetensors(load_file(str(path)), path, {**header, **{k: str(v) for k, v in extra.items()}})


# --------------------------------------------------------------------------- deterministic files

def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its `__metadata__` keys in sorted order.

    safetensors (Rust) writes the metadata from a hash map whose order changes from process to process, so
    identical tensors and metadata would give different bytes, sha256 and A1111 file hashes. The tensor
    entries and the data after the header are kept as they are; only the header's metadata is reordered.
    The header keeps its length (a reordering of the same JSON), so tensor offsets are unchanged.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n].decode("utf-8"))  # dicts keep the file's order of the tensor entries
    if "__metadata__" not in header:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # another escaping than serde's made it longer: pad to safetensors' 8-byte alignment
        width = (len(text) + 7) // 8 * 8
        return width.to_bytes(8, "little") + text + b" " * (width - len(text)) + data[8 + n:]
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n:]


def canonicalize_file(path: str | os.PathLike) -> None:
    """Rewrite a safetensors file that another library wrote (diffusers' savers) with a sorted header, in place."""
    path = Path(path)
    data = path.read_bytes()
    fixed = canonical_safetensors(data)
    if fixed != data:
        path.write_bytes(fixed)


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write `state` as a safetensors file whose bytes depend only on the tensors and metadata (sorted header).

    Every safetensors file the toolkit writes with more than one metadata key goes through here (or through
    `canonicalize_file`): the same LoRA gives the same file, sha256 and A1111 hash in any run.
    """
    from safetensors.torch import save

    Path(path).write_bytes(canonical_safetensors(save(state, metadata)))


def _read_diffusers(state: dict, header: dict, path: Path) -> LoraWeights:
    configs = {}
    if METADATA_KEY in header:
        raw = json.loads(header[METADATA_KEY])
        for comp in COMPONENTS:  # diffusers stores "<component>.<config key>"
            configs[comp] = {k[len(comp) + 1:]: v for k, v in raw.items() if k.startswith(comp + ".")}
    modules: dict[tuple[str, str], LoraModule] = {}
    for key, value in state.items():
        comp, _, rest = key.partition(".")
        if comp not in COMPONENTS or not rest.endswith(".lora_A.weight"):
            continue
        name = rest[: -len(".lora_A.weight")]
        up = state.get(f"{comp}.{name}.lora_B.weight")
        if up is None:
            raise UserError(f"{path}: {key} has no matching lora_B weight; the file is damaged")
        cfg = configs.get(comp) or {}
        rank = int(value.shape[0])
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, name, cfg.get("lora_alpha", rank))
        modules[(comp, name)] = LoraModule(value, up, float(alpha))
    if not modules:
        raise UserError(f"{path} holds no diffusers LoRA keys (unet.*.lora_A.weight); is it a kohya file? use --to diffusers")
    return LoraWeights(modules, {k: v for k, v in header.items() if k != METADATA_KEY})


def _pattern_value(pattern: dict, name: str, default):
    import re

    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


# --------------------------------------------------------------------------- kohya format

def kohya_name(component: str, module: str) -> str:
    """`unet`, `down_blocks.0.attentions.0.proj_in` -> `lora_unet_down_blocks_0_attentions_0_proj_in`."""
    return COMPONENTS[component] + module.replace(".", "_")


def module_from_kohya(name: str) -> tuple[str, str]:
    """Inverse of `kohya_name` for SD 1.x U-Net and CLIP text-encoder module paths."""
    for comp, prefix in COMPONENTS.items():
        if name.startswith(prefix):
            tokens = name[len(prefix):].split("_")
            break
    else:
        raise UserError(f"kohya key {name} does not start with lora_unet_ or lora_te_ (SD 1.x LoRA expected)")
    parts, i = [], 0
    while i < len(tokens):
        for n in (3, 2):
            joined = "_".join(tokens[i:i + n])
            if len(tokens[i:i + n]) == n and joined in _COMPOUND:
                parts.append(joined)
                i += n
                break
        else:
            parts.append(tokens[i])
            i += 1
    return comp, ".".join(parts)


def kohya_state(lora: LoraWeights) -> dict[str, torch.Tensor]:
    """The kohya key layout: `<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha` (scalar)."""
    state = {}
    for (comp, module), m in sorted(lora.modules.items()):
        name = kohya_name(comp, module)
        state[f"{name}.lora_down.weight"] = m.down.contiguous()
        state[f"{name}.lora_up.weight"] = m.up.contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(m.alpha), dtype=m.down.dtype if m.down.is_floating_point() else torch.float32)
    return state


def addnet_hash(source: "bytes | str | os.PathLike") -> str:
    """SHA-256 (hex) of a safetensors file's bytes after its header: kohya's `sshs_model_hash`,
    AUTOMATIC1111's "Lora hashes" (first 12 digits) and civitai's AutoV3. `source`: the file's bytes or its path."""
    h = hashlib.sha256()
    with (io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")) as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _header(path: Path) -> tuple[list[str], dict[str, str]]:
    """A safetensors file's tensor names and metadata, from its header only; UserError naming the file if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else err.__class__.__name__
        raise UserError(f"{path} is not a readable safetensors LoRA file ({first}); write it again or convert it "
                        "with `python -m lora convert`") from None


def kohya_sibling(path: str | os.PathLike) -> Path | None:
    """The kohya file `lora train` writes beside a diffusers file: <folder>/<folder name>.safetensors, if there."""
    from prompts.layout import lora_kohya_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    candidate = folder / lora_kohya_file(folder.name)
    return candidate if candidate.is_file() and candidate != path else None


def a1111_short_hash(path: str | os.PathLike) -> str:
    """The LoRA hash A1111 shows in "Lora hashes" (and civitai's AutoV3 prefix): 12 hex digits.

    A1111 (extensions-builtin/Lora/network.py) takes the kohya file's `sshs_model_hash` metadata, else
    the addnet hash of the file (SHA-256 of the bytes after the header), and keeps the first 12 digits.
    For a diffusers file, the hash is that of the kohya file beside it (`lora train` writes both), or,
    without one, of the kohya file `lora convert --to kohya` would write from it (its tensor bytes are fixed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / DIFFUSERS_WEIGHT_NAME
    keys, meta = _header(path)
    if any(k.endswith(".lora_down.weight") for k in keys):
        return (meta.get("sshs_model_hash") or addnet_hash(path))[:12]
    sibling = kohya_sibling(path)
    if sibling is not None:
        return a1111_short_hash(sibling)
    try:
        lora = read_lora(path)
    except UserError:  # keys of another diffusers layout (legacy `lora.down`, ...): the file's own addnet hash,
        return addnet_hash(path)[:12]  # what A1111 would show for it; whether it loads is for the loader to say
    return kohya_hashes(kohya_state(lora), {})[0][:12]


def lora_file_sha256(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of a LoRA's files: {'diffusers': ..., 'kohya': ...} for those that exist (cached by size and mtime)."""
    from prompts.fingerprint import file_sha256

    path = Path(path)
    if path.is_dir():
        path = path / DIFFUSERS_WEIGHT_NAME
    keys, _ = _header(path)
    if any(k.endswith(".lora_down.weight") for k in keys):
        files = {"kohya": path, "diffusers": path.parent / DIFFUSERS_WEIGHT_NAME if kohya_sibling(path.parent) == path else None}
    else:
        files = {"diffusers": path, "kohya": kohya_sibling(path)}
    return {kind: file_sha256(p) for kind, p in sorted(files.items()) if p is not None and Path(p).is_file()}

def kohya_hashes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """kohya's `sshs_model_hash` and `sshs_legacy_hash` (sd-scripts' precalculate_safetensors_hashes).

    model hash: SHA-256 of the bytes after the safetensors header of the file saved
    with only the `ss_*` metadata; legacy hash: 8 hex digits of 64 KiB at offset 1 MiB.
    """
    from safetensors.torch import save

    data = save(state, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    model_hash = addnet_hash(data)
    buf = io.BytesIO(data)
    buf.seek(0x100000)
    legacy = hashlib.sha256(buf.read(0x10000)).hexdigest()[:8]
    return model_hash, legacy


def write_kohya(lora: LoraWeights, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a kohya/A1111 LoRA file; `metadata` values are strings (ss_* keys), hashes are added."""
    path = Path(path)
    state = kohya_state(lora)
    meta = {k: str(v) for k, v in {**lora.metadata, **(metadata or {})}.items()
            if k.startswith(("ss_", "modelspec.")) or k == WRITTEN_BY}  # written_by: ours to replace (prompts.guard)
    rank, alpha = lora.rank_alpha()
    meta.setdefault("ss_network_module", "networks.lora")
    meta.setdefault("ss_network_dim", str(rank))
    meta.setdefault("ss_network_alpha", str(alpha))
    meta.setdefault("ss_base_model_version", "sd_v1")
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = kohya_hashes(state, meta)
    with atomic_path(path) as tmp:
        save_safetensors(state, tmp, {"format": "pt", **meta})
    return path


def _read_kohya(state: dict, header: dict, path: Path) -> LoraWeights:
    modules = {}
    for key, value in state.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = state.get(f"{name}.lora_up.weight")
        if up is None:
            raise UserError(f"{path}: {key} has no matching lora_up weight; the file is damaged")
        alpha = state.get(f"{name}.alpha")
        alpha = float(alpha.item()) if alpha is not None else float(value.shape[0])  # kohya: no alpha means alpha = rank
        modules[module_from_kohya(name)] = LoraModule(value, up, alpha)
    if not modules:
        raise UserError(f"{path} holds no kohya LoRA keys (lora_unet_*.lora_down.weight)")
    return LoraWeights(modules, dict(header))


# --------------------------------------------------------------------------- reading and converting

def read_lora(path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA file in either format (a folder means its pytorch_lora_weights.safetensors).

    `metadata['__format__']` tells which format it was.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / DIFFUSERS_WEIGHT_NAME
    if not path.is_file():
        raise UserError(f"LoRA file {path} does not exist")
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path} is not a .safetensors file; only safetensors LoRAs are read (pickle files can run code)")
    _, header = _header(path)  # a damaged header: one line naming the file
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types; e.g. a file cut short
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else err.__class__.__name__
        raise UserError(f"{path} is not a readable safetensors LoRA file ({first}); write it again or convert it "
                        "with `python -m lora convert`") from None
    if any(k.endswith(".lora_down.weight") for k in state):
        lora, fmt = _read_kohya(state, header, path), "kohya"
    else:
        lora, fmt = _read_diffusers(state, header, path), "diffusers"
    lora.metadata["__format__"] = fmt
    return lora


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, metadata: dict[str, str] | None = None) -> Path:
    """Convert a LoRA file to `to` ('kohya': a .safetensors file; 'diffusers': a folder or a .safetensors path).

    Refuses to overwrite `src`. `metadata` goes into the written file's header. Returns the written file.
    """
    src, dst = Path(src), Path(dst)
    if to not in ("kohya", "diffusers"):
        raise UserError(f"--to {to}: expected kohya or diffusers")
    lora = read_lora(src)
    if dst.resolve() == (src / DIFFUSERS_WEIGHT_NAME if src.is_dir() else src).resolve():
        raise UserError(f"{dst} is the input file; choose another output path")
    if to == "kohya":
        if dst.suffix.lower() != ".safetensors":
            raise UserError(f"{dst}: a kohya LoRA is one .safetensors file; give a path ending in .safetensors")
        return write_kohya(lora, dst, metadata)
    if dst.suffix.lower() == ".safetensors":
        written = write_diffusers(lora, dst.parent if dst.name == DIFFUSERS_WEIGHT_NAME else _tmp_folder(dst), metadata)
        if dst.name != DIFFUSERS_WEIGHT_NAME:
            os.replace(written, dst)
            written.parent.rmdir()
            return dst
        return written
    return write_diffusers(lora, dst, metadata)


def _tmp_folder(dst: Path) -> Path:
    from prompts.files import temp_dir_beside

    return temp_dir_beside(dst, prefix=f".{dst.stem}.")
