"""Shared fixtures: small data sets made on the fly, the tiny Stable Diffusion, real data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("USE_TF", "0")  # transformers must not import TensorFlow in the torch rooms
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent")
    return path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """5 cell lines x good/acceptable/bad, 30 images at 64x64 (study proportions, at least 5 per class)."""
    from prompts.demo import write_demo_dataset

    return write_demo_dataset(
        tmp_path_factory.mktemp("demo") / "data", per_class={"good": 15, "acceptable": 9, "bad": 6}, size=64
    )


@pytest.fixture(scope="session")
def class_data(tmp_path_factory) -> Path:
    """DATA/<class>/<image>: 2 classes x 6 grayscale 64x64 PNGs."""
    import numpy as np

    from prompts.demo import micrograph

    root = tmp_path_factory.mktemp("classdata") / "data"
    for label in ("good", "bad"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            micrograph(label, "A549", 64, np.random.default_rng(i)).save(root / label / f"{label}_{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Stable Diffusion in diffusers layout (needs torch)."""
    pytest.importorskip("torch")
    from diffusion.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny-sd")


@pytest.fixture(scope="session")
def class_loras(tiny_model, tmp_path_factory) -> Path:
    """LORA/good/ and LORA/bad/ for the tiny model (class_data's classes)."""
    root = tmp_path_factory.mktemp("loras") / "lora"
    from .lora_fixtures import make_lora

    for i, label in enumerate(("good", "bad")):
        make_lora(tiny_model, root / label, seed=i + 1)
    return root
