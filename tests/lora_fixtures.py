"""LoRAs made directly with peft (not with `lora train`), for the generate tests."""
from __future__ import annotations

from pathlib import Path


def make_lora(model: Path, folder: Path, seed: int = 0, scale: float = 0.05, rank: int = 4, alpha: float = 8.0,
              kohya: bool = True, diffusers_file: bool = True) -> Path:
    """A LoRA for the tiny model in the `lora train` layout: random non-zero lora_B so that it changes images.

    Writes folder/pytorch_lora_weights.safetensors (diffusers keys + adapter metadata, so
    alpha != rank reloads right) and folder/<name>.safetensors (kohya/A1111 keys with .alpha).
    """
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    te = CLIPTextModel.from_pretrained(model / "text_encoder")
    ucfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    tcfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    unet.add_adapter(ucfg)
    te.add_adapter(tcfg)
    g = torch.Generator().manual_seed(seed)
    for m in (unet, te):
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=g) * scale
    usd = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    tsd = convert_state_dict_to_diffusers(get_peft_model_state_dict(te))
    folder.mkdir(parents=True, exist_ok=True)
    if diffusers_file:
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=usd, text_encoder_lora_layers=tsd,
            unet_lora_adapter_metadata=ucfg.to_dict(), text_encoder_lora_adapter_metadata=tcfg.to_dict(),
        )
    if kohya:
        ko = {}
        for key, v in usd.items():  # unet.<module>.lora.down.weight
            mod, kind = key.removeprefix("unet.").split(".lora.")
            ko[f"lora_unet_{mod.replace('.', '_')}.lora_{kind.split('.')[0]}.weight"] = v.contiguous()
            ko[f"lora_unet_{mod.replace('.', '_')}.alpha"] = torch.tensor(float(alpha))
        for key, v in tsd.items():  # text_encoder.text_model.<module>.lora_linear_layer.down.weight
            mod, kind = key.removeprefix("text_encoder.").split(".lora_linear_layer.")
            ko[f"lora_te_{mod.replace('.', '_')}.lora_{kind.split('.')[0]}.weight"] = v.contiguous()
            ko[f"lora_te_{mod.replace('.', '_')}.alpha"] = torch.tensor(float(alpha))
        save_file(ko, folder / f"{folder.name}.safetensors", metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
    return folder
