"""The feature cache: frozen-base features computed once per image and view, kept on disk.

The base is frozen and runs in inference mode, so its output for an image does
not depend on the fold, the mix or the epoch. We compute it once per image
*content* and per *view*. The content key (`image_key`) is the SHA-256 of the decoded
pixels (mode, size, 8-bit values as the classifier reads them), not of the file bytes: a
PNG's text chunks (provenance, times, paths) differ between two runs of the same study
in two folders, and must change neither a cache key nor a result. Views:

- view `plain`: the image itself (test images; training without augmentation);
- view `aug<v>-s<seed>` (v = 0..V-1): the image passed through the augmentation
  layers, reseeded from (content hash, view), so a view is reproducible and
  independent of batch composition. Training epoch e uses view e mod V;
  V = epochs gives every epoch a fresh augmentation, as in the naive method.

Layout: CACHE/<model_key>/<view>/<shard>.npz, each shard holding `keys` (n,)
and `feats` (n, F) float32, written atomically after each batch, so a killed
run resumes where it stopped and every run, fold and mix shares the shards.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prompts.files import atomic_path, sha256_bytes

from .pixels import image_to_array

log = logging.getLogger(__name__)
PLAIN = "plain"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cellsynth" / "features"


def aug_views(n_views: int, seed: int) -> list[str]:
    """Names of the V augmented views for a seed: ['aug0-s0-<policy>', 'aug1-s0-<policy>', ...].

    <policy> identifies the augmentation layers' settings, so a changed
    augmentation never reuses features cached under the old one.
    """
    from .model import augmentation_id

    policy = augmentation_id()
    return [f"aug{v}-s{seed}-{policy}" for v in range(n_views)]


def image_key(path, reading) -> str:
    """SHA-256 (hex) of an image's decoded pixels, as the classifier reads them under `reading` (the data section's
    rule, `prompts.normalize.Reading`): equal for equal pixels whatever the file's metadata or place. A scene name
    (`file.czi#scene-2`) keys that scene. Memoised per (real path, size, mtime, reading rule), so a study hashes each
    image once per process and two rules never share a key.
    """
    from prompts.images import file_of

    base = file_of(path)
    real = os.path.realpath(base)
    st = os.stat(real)
    return _image_key(real + str(path)[len(str(base)):], st.st_size, st.st_mtime_ns, reading)


@functools.lru_cache(maxsize=None)
def _image_key(name: str, size: int, mtime_ns: int, reading) -> str:
    from prompts.images import load_image

    img = load_image(name, reading)  # what the classifier reads: 8-bit L or RGB, EXIF orientation applied
    h = hashlib.sha256(f"{img.mode}|{img.size[0]}x{img.size[1]}|".encode())
    h.update(img.tobytes())
    return h.hexdigest()


@dataclass
class ImageTable:
    """Unique images by content: keys[i] (`image_key`: SHA-256 of the decoded pixels) is the content of paths[i],
    decoded under `reading` (the data section's rule)."""

    keys: list[str]
    paths: list[Path]
    reading: object  # prompts.normalize.Reading

    @classmethod
    def from_paths(cls, paths, reading) -> "ImageTable":
        keys, uniq = [], []
        seen = set()
        for p in paths:
            k = image_key(p, reading)  # memoised: the CV plan keyed these already
            if k not in seen:
                seen.add(k)
                keys.append(k)
                uniq.append(Path(p))
        return cls(keys, uniq, reading)

    def row(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


class FeatureCache:
    """On-disk store of feature vectors keyed by (model_key, view, content hash)."""

    def __init__(self, root: str | os.PathLike, model_key: str):
        self.dir = Path(root) / model_key

    def load(self, view: str) -> dict[str, np.ndarray]:
        """All cached vectors of a view: content hash -> (F,) float32.

        A shard that cannot be read (truncated by a full disk, bit rot, a foreign
        file) is removed with one warning, so its images are recomputed.
        """
        out: dict[str, np.ndarray] = {}
        d = self.dir / view
        if not d.is_dir():
            return out
        for shard in sorted(d.glob("*.npz")):
            try:
                keys, feats = _read_shard(shard)
            except Exception as err:  # noqa: BLE001 - numpy raises BadZipFile, EOFError, ValueError, OSError...
                reason = f"{err.__class__.__name__}: {err}".splitlines()[0]
                if _SHARD_NAME.match(shard.name):  # only a shard this cache wrote is removed
                    shard.unlink(missing_ok=True)
                log.warning("feature cache shard %s is unreadable (%s); its features are recomputed", shard, reason)
                continue
            out.update(zip(keys, feats))
        return out

    def save(self, view: str, keys: list[str], feats: np.ndarray) -> None:
        with atomic_path(self.dir / view / _shard_name(keys)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, keys=np.array(keys), feats=feats.astype(np.float32))


_SHARD_NAME = re.compile(r"^[0-9a-f]{16}\.npz$")


def _shard_name(keys: list[str]) -> str:
    """The file name of the shard that holds these content hashes."""
    return sha256_bytes("".join(keys).encode())[:16] + ".npz"


def _read_shard(shard: Path) -> tuple[list[str], np.ndarray]:
    """keys (n,) and feats (n, F) float32 of one shard; ValueError when they do not fit together."""
    with np.load(shard, allow_pickle=False) as z:
        keys, feats = z["keys"].tolist(), np.asarray(z["feats"], dtype=np.float32)
    if feats.ndim != 2 or len(keys) != len(feats) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"keys {len(keys)} and feats {feats.shape} do not match")
    return keys, feats


GPU_FEATURE_BATCH = 64  # images per call of the base on a GPU with the torch backend: enough to fill it


def feature_batch_size(batch_size: int) -> int:
    """Images per call of the frozen base: the study's batch size, and at least GPU_FEATURE_BATCH on a GPU with the
    torch backend (inference needs no gradients, so a larger batch fits; one call per 16 images is launch-bound)."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return max(batch_size, GPU_FEATURE_BATCH)
    return batch_size


class Extractor:
    """Frozen base (+ augmentation layers for augmented views), built on first use.

    Every call of the base has the same shape (batch_size, S, S, 3): a short last batch is padded with copies of
    its last image and the padding's outputs dropped (inference BatchNorm treats each image alone, so padding
    changes no feature). The base runs through Keras' compiled predict (`predict_on_batch`: one traced graph on
    TensorFlow, no per-layer Python dispatch), traced once.
    """

    def __init__(self, build_base, image_size: int, batch_size: int = 16, seed: int = 0):
        self._build_base = build_base
        self.image_size = image_size
        self.batch_size = feature_batch_size(batch_size)
        self.seed = seed
        self._base = None
        self._aug = None
        self._aug_graphs: dict[tuple, object] = {}  # batch shape -> compiled augmentation (TensorFlow)

    @property
    def base(self):
        if self._base is None:
            self._base = self._build_base()
        return self._base

    def pixels(self, paths, reading) -> np.ndarray:
        return np.stack([image_to_array(p, self.image_size, reading) for p in paths]).astype(np.float32)

    def _padded_batches(self, x: np.ndarray):
        """(start, n, batch of exactly batch_size) over x, the last one padded with copies of its last image."""
        bs = self.batch_size
        for s in range(0, len(x), bs):
            chunk = x[s:s + bs]
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, axis=0)])
            yield s, n, chunk

    def augment(self, x: np.ndarray, keys: list[str], view: str) -> np.ndarray:
        """Apply the augmentation layers to each image with a seed from (content, view).

        Each image's transformation depends only on its own seed, never on the batch. On TensorFlow the whole
        batch goes through one compiled call (`_augment_graph`); elsewhere, image by image.
        """
        from .model import augmentation_layers

        if self._aug is None:
            self._aug = augmentation_layers(self.seed)
        seeds = [zlib.crc32(f"{k}|{view}".encode()) & 0x3FFFFFFF for k in keys]
        import keras

        if keras.backend.backend() != "tensorflow":
            return self._augment_eager(x, seeds)
        out = np.empty_like(x)
        for s, n, chunk in self._padded_batches(np.asarray(x, np.float32)):
            batch_seeds = seeds[s:s + n] + [seeds[s + n - 1]] * (len(chunk) - n)
            out[s:s + n] = self._augment_graph(chunk.shape)(chunk, np.asarray(batch_seeds, np.int64)).numpy()[:n]
        return out

    def _augment_eager(self, x: np.ndarray, seeds: list[int]) -> np.ndarray:
        import keras

        from .model import reseed_layers

        out = np.empty_like(x)
        for i, seed in enumerate(seeds):
            reseed_layers(self._aug, seed)
            y = x[i : i + 1]
            for layer in self._aug:
                y = layer(y, training=True)
            out[i] = keras.ops.convert_to_numpy(y)[0]
        return out

    def _augment_graph(self, shape):
        """A tf.function of a fixed-shape batch and one seed per image: each image reseeds the layers exactly as
        `model.reseed_layers` does, then passes through them, in order (map_fn, one image at a time)."""
        shape = tuple(shape)
        if shape in self._aug_graphs:
            return self._aug_graphs[shape]
        import tensorflow as tf

        layers = self._aug

        def one(image, seed):
            for i, layer in enumerate(layers):
                for gen in getattr(layer, "_seed_generators", []):
                    dtype = gen.state.dtype
                    gen.state.assign(tf.stack([tf.cast((seed * 7 + i) % 2_147_483_647, dtype), tf.constant(0, dtype)]))
            y = image[None]
            for layer in layers:
                y = layer(y, training=True)
            return y[0]

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32), tf.TensorSpec([shape[0]], tf.int64)])
        def graph(images, seeds):
            return tf.map_fn(lambda a: one(*a), (images, seeds), fn_output_signature=tf.float32, parallel_iterations=1)

        self._aug_graphs[shape] = graph
        return graph

    def features(self, x: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) float 0..255 -> (n, F) float32, in calls of exactly `batch_size` images."""
        out = [np.asarray(self.base.predict_on_batch(chunk), dtype=np.float32)[:n] for _, n, chunk in self._padded_batches(x)]
        if not out:
            return np.zeros((0, int(self.base.output_shape[-1])), np.float32)
        return np.concatenate(out)


class _Decoder:
    """Decodes images on a few threads ahead of the base (PIL releases the GIL while it decodes), keeping each
    image's uint8 pixels while the views are computed, so every image is decoded once."""

    def __init__(self, table: ImageTable, size: int, workers: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.table, self.size = table, size
        self.pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1), thread_name_prefix="decode")
        self.pending: dict[int, object] = {}

    def prefetch(self, rows) -> None:
        for i in rows:
            if i not in self.pending:
                self.pending[i] = self.pool.submit(image_to_array, self.table.paths[i], self.size, self.table.reading)

    def pixels(self, rows) -> np.ndarray:
        """(len(rows), S, S, 3) float32 pixels 0..255; a decoding error is raised here, in the caller's thread."""
        self.prefetch(rows)
        return np.stack([self.pending[i].result() for i in rows]).astype(np.float32)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def compute_features(
    table: ImageTable, views: list[str], cache: FeatureCache, extractor: Extractor, progress: bool = True
) -> dict[str, np.ndarray]:
    """Features of every image of `table` in every view: view -> (n_images, F) float32.

    Only images missing from the cache are decoded and passed through the base; while one batch runs through
    the base, the next one is decoded on other threads; each finished batch is written to the cache at once.
    """
    from tqdm import tqdm

    out: dict[str, np.ndarray] = {}
    missing_by_view = {}
    cached_by_view = {}
    for view in views:
        cached = cache.load(view)
        cached_by_view[view] = cached
        missing_by_view[view] = [i for i, k in enumerate(table.keys) if k not in cached]
    total = sum(len(m) for m in missing_by_view.values())
    bar = tqdm(total=total, desc="features", unit="img", disable=not progress or total == 0, leave=False)
    bs = extractor.batch_size
    work = [(view, missing_by_view[view][s : s + bs]) for view in views for s in range(0, len(missing_by_view[view]), bs)]
    decoder = _Decoder(table, extractor.image_size)
    try:
        for n, (view, rows) in enumerate(work):
            for _, ahead in work[n + 1 : n + 3]:  # two batches ahead
                decoder.prefetch(ahead)
            keys = [table.keys[i] for i in rows]
            x = decoder.pixels(rows)
            if view != PLAIN:
                x = extractor.augment(x, keys, view)
            f = extractor.features(x)
            cache.save(view, keys, f)
            for k, v in zip(keys, f):
                cached_by_view[view][k] = v
            bar.update(len(rows))
    finally:
        decoder.close()
    for view in views:
        cached = cached_by_view[view]
        out[view] = np.stack([cached[k] for k in table.keys]) if table.keys else np.zeros((0, 0), np.float32)
    bar.close()
    return out
