"""A1111 prompt weighting and chunking: the parser against A1111's own examples, the chunks, the embeddings."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from generate.prompt_weighting import chunk, emphasis, encode, parse, prompt_pairs  # noqa: E402

# (prompt, A1111's parse_prompt_attention result); the first six are the doctests of A1111's prompt_parser.py
PARSE_TABLE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("(word:1.2)", [("word", 1.2)]),
    ("(word: 0.5 )", [("word", 0.5)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("((word))", [("word", 1.1 * 1.1)]),
    ("(a [b] c:1.5)", [("a ", 1.5), ("b", 1.5 / 1.1), (" c", 1.5)]),
    ("unmatched) and ]", [("unmatched) and ]", 1.0)]),  # stray closers stay text
    ("a \\\\ b \\(c\\)", [("a \\ b (c)", 1.0)]),
    ("ratio 1:2", [("ratio 1:2", 1.0)]),
    ("cells BREAK background", [("cells", 1.0), ("BREAK", -1.0), ("background", 1.0)]),
    ("BREAKfast", [("BREAKfast", 1.0)]),
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize("prompt,expected", PARSE_TABLE)
def test_parse_matches_a1111(prompt, expected):
    got = parse(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-15, abs=0)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from diffusion.model import load_pipeline

    pipe = load_pipeline(tiny_model)
    # the tiny CLIP's final layer norm has a zero bias, so its hidden states average ~0; a trained CLIP's do not
    with torch.no_grad():
        pipe.text_encoder.text_model.final_layer_norm.bias.normal_(generator=torch.Generator().manual_seed(0))
    return pipe


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_per_token_weights(pipe):
    tok = pipe.tokenizer
    chunks, weights = chunk(tok, "a (cell:1.5) [photo]")
    a, cell, photo = ids(tok, "a"), ids(tok, "cell"), ids(tok, "photo")
    n = len(a) + len(cell) + len(photo)
    assert len(chunks) == 1 and len(chunks[0]) == len(weights[0]) == 77
    assert chunks[0][: n + 2] == [tok.bos_token_id, *a, *cell, *photo, tok.eos_token_id]
    assert weights[0][: n + 1] == [1.0] + [1.0] * len(a) + [1.5] * len(cell) + [1 / 1.1] * len(photo)
    assert set(weights[0][n + 1:]) == {1.0} and set(chunks[0][n + 1:]) == {tok.pad_token_id}


def test_plain_prompt_tokens_are_diffusers_tokens(pipe):
    tok = pipe.tokenizer
    text = "brightfield micrograph of healthy cells, phase contrast"
    chunks, _ = chunk(tok, text)
    assert chunks == [tok(text, padding="max_length", max_length=77, truncation=True).input_ids]


def test_long_prompts_are_chunked_like_a1111(pipe):
    tok = pipe.tokenizer
    words = " ".join(["cell"] * 100)  # no comma: the first chunk holds exactly 75 tokens
    chunks, weights = chunk(tok, words)
    per_word = len(ids(tok, "cell"))
    assert len(chunks) == -(-100 * per_word // 75)
    assert chunks[0][1:76] == ids(tok, words)[:75] and chunks[0][76] == tok.eos_token_id
    assert chunks[1][1:1 + 100 * per_word - 75] == ids(tok, words)[75:]
    # a comma within 20 tokens before the 75-token boundary: the chunk ends after the comma
    text = " ".join(["cell"] * 70) + ", " + " ".join(["photo"] * 10)
    chunks, _ = chunk(tok, text)
    comma = tok.get_vocab()[",</w>"]
    first = chunks[0][1:chunks[0].index(tok.eos_token_id, 1)]
    assert first[-1] == comma and len(first) == len(ids(tok, " ".join(["cell"] * 70))) + 1
    # BREAK starts a new chunk
    chunks, _ = chunk(tok, "cell BREAK photo")
    assert len(chunks) == 2 and chunks[1][1:1 + len(ids(tok, "photo"))] == ids(tok, "photo")


def test_weights_of_one_reproduce_the_plain_embedding_exactly(pipe):
    plain = ["a brightfield micrograph of cells", "healthy cells"]
    weighted = ["a (brightfield:1.0) micrograph of (cells:1)", "(healthy:1.0) cells"]
    ref, _ = pipe.encode_prompt(plain, "cpu", 1, False)
    for texts in (plain, weighted):
        got = torch.stack(encode(pipe.text_encoder, pipe.tokenizer, texts))
        assert torch.equal(got, ref)


def test_weighting_scales_tokens_and_restores_the_mean(pipe):
    tok = pipe.tokenizer
    (plain,) = encode(pipe.text_encoder, tok, ["a cell photo"])
    (z,) = encode(pipe.text_encoder, tok, ["a (cell:1.5) photo"])
    _, (w,) = chunk(tok, "a (cell:1.5) photo")
    w = torch.tensor(w)
    torch.testing.assert_close(z, emphasis(plain, w), rtol=0, atol=0)
    torch.testing.assert_close(z.mean(), plain.mean(), rtol=1e-5, atol=1e-7)
    scale = (plain.mean() / (plain * w[:, None]).mean())
    torch.testing.assert_close(z, plain * w[:, None] * scale)
    assert not torch.equal(z, plain)


def test_negative_prompt_is_padded_with_the_empty_prompt(pipe):
    tok = pipe.tokenizer
    long = " ".join(["cell"] * 100)
    (cond, uncond), (c2, u2) = prompt_pairs(pipe.text_encoder, tok, [long, "cell"], ["blurry", "blurry"])
    assert cond.shape == uncond.shape == (154, pipe.text_encoder.config.hidden_size)
    (empty,) = encode(pipe.text_encoder, tok, [""])
    (blurry,) = encode(pipe.text_encoder, tok, ["blurry"])
    assert torch.equal(uncond[:77], blurry) and torch.equal(uncond[77:], empty)
    assert c2.shape == u2.shape == (77, pipe.text_encoder.config.hidden_size)


def test_generate_batches_mixed_chunk_counts_and_weights_change_the_image(pipe, tmp_path):
    """sample_batch: a batch whose prompts take 1 and 2 chunks makes each image as it is made alone; weighting acts."""
    import numpy as np

    from generate.plan import ImageJob
    from generate.sample import Settings, sample_batch

    def job(prompt, seed):
        return ImageJob(file=f"{seed}.png", label="good", cell_line=None, group="good", fold=None, weight=0.0, index=0, seed=seed,
                   prompt=prompt, negative_prompt="blurry", loras=(), gray=False)

    s = Settings(model="unused", output=tmp_path, steps=3, width=64, height=64)
    pipe.set_progress_bar_config(disable=True)
    long = ", ".join(["healthy cell"] * 40)
    both = sample_batch(pipe, None, [job(long, 1), job("a cell photo", 2)], s, tmp_path)
    alone = [sample_batch(pipe, None, [job(long, 1)], s, tmp_path)[0], sample_batch(pipe, None, [job("a cell photo", 2)], s, tmp_path)[0]]
    np.testing.assert_allclose(both, np.stack(alone), atol=1e-5)
    weighted = sample_batch(pipe, None, [job("a (cell:1.8) photo", 2)], s, tmp_path)[0]
    assert np.abs(weighted - alone[1]).mean() > 1e-3
