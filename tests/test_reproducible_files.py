"""Reproducible by default: the same inputs give the same files, byte for byte, on one machine.

- safetensors files (LoRA in both formats) of identical tensors and metadata are identical files:
  safetensors orders its header's metadata from a hash map that changes from process to process,
  so the toolkit writes the header sorted (`diffusion.formats.canonical_safetensors`);
- a generation with no seed given, run twice in two folders, writes byte-identical PNGs and manifests;
- the starting noise drawn up front is the draw diffusers would make itself from each image's generator.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

torch = pytest.importorskip("torch")
# unit tier by default (tests/conftest.py); its slowest test is on END_TO_END_TESTS there


def a_lora(seed: int = 0):
    """A small LoRA in memory: two U-Net attention projections and one text-encoder projection."""
    from diffusion.formats import LoraModule, LoraWeights

    g = torch.Generator().manual_seed(seed)
    names = [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
             ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"),
             ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")]
    modules = {k: LoraModule(torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g), 4.0) for k in names}
    return LoraWeights(modules, {"ss_output_name": "good", "ss_training_comment": "test", "ss_seed": "0"})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_safetensors_metadata_order_no_longer_changes_the_bytes():
    from safetensors.torch import load, save

    from diffusion.formats import canonical_safetensors

    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.float16)}
    meta = {f"key_{i}": f"value {i}" for i in range(12)} | {"format": "pt", "ünïcode": "µm/px"}
    raw = [save(state, meta) for _ in range(6)]
    assert len(set(raw)) > 1, "safetensors kept the metadata order: the header needs no sorting any more"
    fixed = {canonical_safetensors(r) for r in raw}
    assert len(fixed) == 1
    data = fixed.pop()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    assert list(header["__metadata__"]) == sorted(meta)
    back = load(data)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_lora_files_of_the_same_tensors_are_the_same_bytes(tmp_path):
    from diffusion.formats import a1111_short_hash, read_lora, write_diffusers, write_kohya

    files = []
    for i in range(4):  # safetensors' hash-map order changes between calls: four writes all agree
        kohya = write_kohya(a_lora(), tmp_path / f"k{i}" / "good.safetensors", {"ss_num_epochs": "3"})
        diffusers = write_diffusers(a_lora(), tmp_path / f"k{i}", {"cellsynth_written_by": "lora train", "x": "1"})
        files.append((kohya, diffusers))
    assert len({sha(k) for k, _ in files}) == 1
    assert len({sha(d) for _, d in files}) == 1
    assert len({a1111_short_hash(d) for _, d in files}) == 1
    back = read_lora(files[0][1])
    assert torch.equal(back.modules[("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")].down,
                       a_lora().modules[("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")].down)


def test_lora_files_are_the_same_bytes_across_processes(tmp_path):
    """Two interpreters (each with its own hash seeds) write the same kohya and diffusers files."""
    code = ("import sys; sys.path.insert(0, {root!r}); from pathlib import Path; "
            "from tests.test_reproducible_files import a_lora; from diffusion.formats import write_kohya, write_diffusers; "
            "out = Path(sys.argv[1]); write_kohya(a_lora(), out / 'good.safetensors'); write_diffusers(a_lora(), out)")
    for name in ("p1", "p2"):
        subprocess.run([sys.executable, "-c", code.format(root=str(ROOT)), str(tmp_path / name)], check=True, timeout=300)
    for f in ("good.safetensors", "pytorch_lora_weights.safetensors"):
        assert (tmp_path / "p1" / f).read_bytes() == (tmp_path / "p2" / f).read_bytes(), f


def test_initial_noise_is_diffusers_own_draw():
    """The latents drawn up front equal diffusers' randn_tensor with the same per-image generators, and leave
    each generator in the same state (so the sampler's noise after it is the same too)."""
    from diffusers.utils.torch_utils import randn_tensor

    from generate.sample import initial_noise

    seeds = [7, 123456789, 2**32 - 1]
    for dtype in (torch.float32, torch.float16):
        ours = [torch.Generator().manual_seed(s) for s in seeds]
        theirs = [torch.Generator().manual_seed(s) for s in seeds]
        mine = initial_noise([None] * 3, ours, (4, 8, 8), dtype, torch.device("cpu"))
        ref = randn_tensor((3, 4, 8, 8), generator=theirs, device=torch.device("cpu"), dtype=dtype)
        assert mine.dtype == dtype and torch.equal(mine, ref)
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ours, theirs))
        alone = initial_noise([None], [torch.Generator().manual_seed(seeds[1])], (4, 8, 8), dtype, torch.device("cpu"))
        assert torch.equal(alone[0], mine[1])  # an image's noise does not depend on its batch


def test_the_same_generation_in_two_folders_is_the_same_files(tiny_model, class_loras, class_data, tmp_path):
    """No --seed: the default seed makes the same images; PNG and manifest bytes are identical."""
    from .test_generate_run import base_args, run

    torch.set_num_threads(1)
    outs = [tmp_path / "one" / "syn", tmp_path / "two" / "syn"]
    for out in outs:
        assert run(*base_args(tiny_model, class_loras, class_data, out, "--count", "2", "--lora-weights", "0.8",
                              "--batch-size", "2")) == 0
    pngs = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.png"))
    assert len(pngs) == 4
    assert pngs == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*.png"))
    for rel in pngs:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    assert (outs[0] / "manifest.jsonl").read_bytes() == (outs[1] / "manifest.jsonl").read_bytes()
    assert {json.loads(line)["run_seed"] for line in (outs[0] / "manifest.jsonl").read_text().splitlines()} == {0}
