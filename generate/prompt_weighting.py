"""AUTOMATIC1111's prompt weighting and long-prompt chunking, for generate's prompts and templates.

A small port of A1111's own code rather than a library: `parse` is
`modules/prompt_parser.parse_prompt_attention`, `chunk` is `sd_hijack_clip.tokenize_line`
(75 tokens per chunk, comma back-tracking of 20 tokens, `BREAK`), and `encode` is its
`process_tokens` with the default "Original" emphasis. (`compel`, the usual diffusers
companion, has its own grammar, `word++` / `(word)1.2`, and weights by blending with the
token left out instead of A1111's scale-then-restore-the-mean, so it cannot reproduce
A1111's embeddings.)

Grammar: `(text)` x 1.1, `((text))` x 1.21, `[text]` / 1.1, `(text:1.5)` x 1.5, nesting
multiplies, an unclosed bracket applies to the end, `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` are
literal characters, and `BREAK` (capitals, a word of its own) starts a new chunk.
A1111's prompt editing (`[a:b:0.5]`) and alternation (`[a|b]`) are not supported: in
them `:` and `|` stay text, as in a prompt with emphasis only.

Shapes: a prompt becomes C chunks of 77 token ids ([BOS] + 75 tokens + [EOS], padded),
and its embedding is the C chunks' CLIP hidden states concatenated along the sequence
axis, [77 * C, D]. Each chunk's hidden states are multiplied per token by the weights,
then rescaled so that the chunk's mean equals its mean before weighting. Weights of 1.0
everywhere leave the hidden states untouched, so a prompt without brackets gets exactly
the embedding diffusers' own encoder gives it.

Where a prompt and its negative prompt have different chunk counts, the shorter one is
padded with the embedding of the empty prompt, chunk by chunk: A1111 with the setting
"Pad prompt/negative prompt to be same length" (by default A1111 then runs the U-Net
twice, unpadded). A1111 computes the emphasis mean over the whole batch; here it is per
prompt, so that an image depends on its own prompts only (A1111 at batch size 1).
"""
from __future__ import annotations

import re
import weakref

import torch

ROUND = 1.1  # (text)
SQUARE = 1 / 1.1  # [text]
CHUNK_TOKENS = 75  # tokens of prompt per chunk; with BOS and EOS, CLIP's 77
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default
BREAK = ("BREAK", -1.0)

_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse(text: str) -> list[tuple[str, float]]:
    """[(text, weight)] of a prompt, runs of equal weight merged; a `BREAK` is ('BREAK', -1.0).

    A1111's `parse_prompt_attention`, the same output for every input:
    `parse('a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).')` ->
    [('a ', 1.0), ('house', 1.573...), (' ', 1.1), ('on', 1.0), (' a ', 1.1), ('hill', 0.55),
    (', sun, ', 1.1), ('sky', 1.4641...), ('.', 1.1)].
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= factor

    for m in _ATTENTION.finditer(text):
        part, weight = m.group(0), m.group(1)
        if part.startswith("\\"):
            res.append([part[1:], 1.0])
        elif part == "(":
            round_open.append(len(res))
        elif part == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif part == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif part == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for i, piece in enumerate(_BREAK.split(part)):
                if i > 0:
                    res.append(list(BREAK))
                res.append([piece, 1.0])
    for pos in round_open:  # unclosed brackets reach the end of the prompt
        multiply(pos, ROUND)
    for pos in square_open:
        multiply(pos, SQUARE)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):  # merge runs of identical weights
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, float(w)) for t, w in res]


_COMMA_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def comma_id(tokenizer) -> int | None:
    """The id of CLIP's ',</w>' token (None when the vocabulary has none), looked up once per tokenizer.

    `get_vocab()` builds the whole vocabulary as a dict (tens of ms on a fast tokenizer): once, not per prompt.
    """
    try:
        return _COMMA_IDS[tokenizer]
    except (KeyError, TypeError):
        pass
    value = tokenizer.get_vocab().get(",</w>")
    try:
        _COMMA_IDS[tokenizer] = value
    except TypeError:  # an object that cannot be weakly referenced: no cache, same answer
        pass
    return value


def chunk(tokenizer, text: str) -> tuple[list[list[int]], list[list[float]]]:
    """A1111's `tokenize_line`: the prompt's chunks of 77 token ids and their per-token weights.

    Each chunk is [BOS] + up to 75 tokens + [EOS] padding; a chunk that would split the
    text less than 20 tokens after a comma breaks after the comma instead; BREAK ends a chunk.
    Positions after the first EOS hold the tokenizer's pad id (= EOS for SD 1.x's tokenizer).
    """
    parsed = parse(text)
    ids = tokenizer([t for t, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = comma_id(tokenizer)
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def next_chunk() -> None:
        nonlocal tokens, weights, last_comma
        fill = CHUNK_TOKENS - len(tokens)
        chunks.append(([bos] + tokens + [eos] * fill + [eos], [1.0] + weights + [1.0] * fill + [1.0]))
        tokens, weights, last_comma = [], [], -1

    for piece_ids, (piece, weight) in zip(ids, parsed):
        if (piece, weight) == BREAK:
            next_chunk()
            continue
        for token in piece_ids:
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_TOKENS and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1  # move the words after the comma to the next chunk
                moved, moved_w = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                next_chunk()
                tokens, weights = moved, moved_w
            if len(tokens) == CHUNK_TOKENS:
                next_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        next_chunk()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids_out = []
    for toks, _ in chunks:
        first_eos = toks.index(eos, 1)
        ids_out.append(toks[: first_eos + 1] + [pad] * (len(toks) - first_eos - 1))
    return ids_out, [w for _, w in chunks]


@torch.no_grad()
def encode(text_encoder, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    """Each prompt's weighted embedding [77 * C, D] (C chunks), on the text encoder's device and dtype.

    All chunks of all texts go through CLIP in one batch; a prompt of one chunk with weights
    1.0 gets exactly CLIP's last hidden state (diffusers' `encode_prompt` without clip skip).
    """
    device = text_encoder.device
    per_text = [chunk(tokenizer, t) for t in texts]
    ids = torch.tensor([c for chunks, _ in per_text for c in chunks], device=device)
    hidden = text_encoder(ids)[0]  # [sum C, 77, D]
    out, row = [], 0
    for chunks, weights in per_text:
        parts = []
        for w in weights:
            z = hidden[row]
            row += 1
            if any(x != 1.0 for x in w):
                parts.append(emphasis(z, torch.tensor(w, device=device, dtype=z.dtype)))
            else:
                parts.append(z)  # weights 1.0: A1111's rescale would be z * 1.0 * (m / m), i.e. z itself
        out.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    return out


def emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis of one chunk: z [77, D] times weights [77] per token, mean restored."""
    original = z.mean()
    z = z * weights[:, None]
    new = z.mean()
    # A1111 divides unconditionally; a mean of exactly 0 (random smoke models' CLIP, whose final
    # layer norm has no bias) would give NaN images there, so the rescale is skipped then.
    return z * (original / new) if new != 0 else z


def pad_to(embeds: torch.Tensor, length: int, empty: torch.Tensor) -> torch.Tensor:
    """[77 * C, D] -> [length, D] by appending the empty prompt's chunk [77, D] (A1111's pad_cond)."""
    missing = (length - embeds.shape[0]) // empty.shape[0]
    return torch.cat([embeds, empty.repeat(missing, 1)]) if missing > 0 else embeds


def prompt_pairs(text_encoder, tokenizer, prompts: list[str], negatives: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prompt, negative prompt) embeddings of each image, both [77 * C, D] with C the larger chunk count of the two."""
    cond = encode(text_encoder, tokenizer, prompts)
    uncond = encode(text_encoder, tokenizer, negatives)
    empty = None
    pairs = []
    for c, u in zip(cond, uncond):
        if c.shape[0] != u.shape[0]:
            if empty is None:
                empty = encode(text_encoder, tokenizer, [""])[0]
            n = max(c.shape[0], u.shape[0])
            c, u = pad_to(c, n, empty), pad_to(u, n, empty)
        pairs.append((c, u))
    return pairs
