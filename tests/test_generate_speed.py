"""generate's faster bookkeeping keeps what it wrote before: PNG level 1 holds the same pixels and chunks as level 6,
the record is read from the text chunks without decoding, the writer threads write every image (and report an
error), and the comma token id is looked up once per tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generate import provenance as prov

pytestmark = pytest.mark.unit

REC = {"file": "w1.0/good/good_00000.png", "prompt": "oocgood, a micrograph (cells:1.2)", "negative_prompt": "blurry",
       "loras": [{"name": "good", "weight": 0.8, "hash": "0123456789ab"}], "steps": 20, "sampler": "Euler a", "cfg": 7.0,
       "seed": 42, "size": [64, 48], "model_hash": "abcdef0123", "model": "tiny", "mode": "txt2img", "strength": None,
       "note": "µm — ünïcode"}


def image(mode: str) -> Image.Image:
    arr = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    return img.convert("L") if mode == "L" else img


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_level_1_keeps_the_pixels_and_chunks_of_level_6(tmp_path, mode):
    fast, default = tmp_path / "fast.png", tmp_path / "default.png"
    prov.save_png(image(mode), fast, REC)
    prov.save_png(image(mode), default, REC, compress_level=6)
    with Image.open(fast) as a, Image.open(default) as b:
        assert a.mode == b.mode == mode
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert a.text == b.text and set(a.text) == {"parameters", prov.CHUNK}
    assert json.loads(Image.open(fast).text[prov.CHUNK]) == REC
    assert prov.read_chunk(fast) == REC


def test_the_record_is_read_without_decoding_the_pixels(tmp_path):
    path = tmp_path / "a.png"
    prov.save_png(image("RGB"), path, REC)
    data = path.read_bytes()
    idat = data.index(b"IDAT")
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: idat + 20])  # the text chunks and the start of the pixel data only
    with pytest.raises(OSError):
        Image.open(cut).load()  # decoding fails ...
    assert prov.read_chunk(cut) == REC  # ... and the record is read all the same: it never decodes
    assert prov.read_chunk(tmp_path / "missing.png") is None


def test_the_writer_threads_write_every_image_and_keep_the_records(tmp_path):
    from generate.sample import PngWriter

    writer = PngWriter(tmp_path, workers=3, max_pending=4)
    arr = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    for i in range(20):
        writer.submit(arr, i % 2 == 0, dict(REC, file=f"w1.0/good/good_{i:05d}.png", seed=i))
    writer.close()
    records, foreign = prov.scan(tmp_path)
    assert foreign == [] and sorted(records) == sorted(writer.records) and len(records) == 20
    assert all(records[f] == writer.records[f] for f in records)
    lines = [json.loads(line) for line in (tmp_path / prov.MANIFEST).read_text().splitlines()]
    assert sorted(r["seed"] for r in lines) == list(range(20))
    with Image.open(tmp_path / "w1.0/good/good_00000.png") as im:
        assert im.mode == "L"


def test_a_writer_error_is_raised_in_the_run(tmp_path):
    from generate.sample import PngWriter

    (tmp_path / "w1.0").write_text("a file where the tree's folder should be")
    writer = PngWriter(tmp_path, workers=2)
    writer.submit(np.zeros((8, 8, 3), np.float32) + 0.5, False, dict(REC, file="w1.0/good/x.png"))
    with pytest.raises(OSError):
        writer.close()


def test_the_comma_id_is_looked_up_once_per_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from diffusion.tiny import write_tiny_tokenizer
    from generate.prompt_weighting import _COMMA_IDS, chunk, comma_id

    write_tiny_tokenizer(Path(tmp_path))
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    assert comma_id(tok) == tok.get_vocab().get(",</w>")
    assert tok in _COMMA_IDS
    ids, _ = chunk(tok, "cells, " * 60 + "end")  # comma back-tracking still splits after a comma
    assert len(ids) == 2
