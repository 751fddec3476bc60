"""The feature path at the batch rate gives the features the eager path gave: the compiled, padded predict; the
compiled batched augmentation; decoding on threads. Equal within float tolerance (TensorFlow backend, EfficientNetB0
with random weights at 32 px)."""
from __future__ import annotations

import numpy as np
import pytest

from prompts.normalize import DEFAULT

pytestmark = pytest.mark.unit
pytest.importorskip("keras")

SIZE = 32


@pytest.fixture(scope="module")
def base():
    from classify.model import build_base, import_keras

    keras = import_keras()
    if keras.backend.backend() != "tensorflow":
        pytest.skip("these tests compare TensorFlow's compiled graphs with its eager calls")
    return build_base("EfficientNetB0", None, SIZE)


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def eager_features(base, x):
    import keras

    return keras.ops.convert_to_numpy(base(x, training=False)).astype(np.float32)


def test_padded_compiled_predict_equals_the_eager_call_and_traces_once(base):
    from classify.features import Extractor

    ex = Extractor(lambda: base, SIZE, batch_size=4)
    for n in (4, 5, 3, 9, 1):  # full, one over, short, two batches and a short one, a single image
        x = pixels(n, seed=n)
        got = ex.features(x)
        assert got.shape == (n, base.output_shape[-1]) and got.dtype == np.float32
        np.testing.assert_allclose(got, eager_features(base, x), rtol=1e-5, atol=1e-5)
    fn = base.predict_function
    if hasattr(fn, "experimental_get_tracing_count"):
        assert fn.experimental_get_tracing_count() == 1  # one signature: the short batches were padded
    assert ex.features(pixels(0)).shape == (0, base.output_shape[-1])


def test_batched_augmentation_equals_the_image_by_image_call(base):
    from classify.features import Extractor

    ex = Extractor(lambda: base, SIZE, batch_size=4, seed=3)
    x = pixels(6, seed=1)
    keys = [f"key{i}" for i in range(6)]
    batched = ex.augment(x, keys, "aug1-s3-policy")
    from classify.model import augmentation_layers

    ex._aug = augmentation_layers(3)
    import zlib

    one_by_one = ex._augment_eager(x, [zlib.crc32(f"{k}|aug1-s3-policy".encode()) & 0x3FFFFFFF for k in keys])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-3)
    assert np.abs(batched - x).mean() > 1  # the views are augmented
    # an image's view does not depend on its batch: alone, or after other images
    alone = ex.augment(x[4:5], keys[4:5], "aug1-s3-policy")
    np.testing.assert_allclose(alone[0], batched[4], rtol=1e-5, atol=1e-3)


def test_compute_features_with_threads_matches_the_eager_path(base, tmp_path):
    from PIL import Image

    from classify.features import PLAIN, Extractor, FeatureCache, ImageTable, compute_features
    from classify.pixels import image_to_array

    paths = []
    for i, arr in enumerate(pixels(7, seed=5).astype(np.uint8)):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    table = ImageTable.from_paths(paths, DEFAULT)
    ex = Extractor(lambda: base, SIZE, batch_size=3)
    out = compute_features(table, [PLAIN, "aug0-s0-x"], FeatureCache(tmp_path / "cache", "m"), ex, progress=False)
    x = np.stack([image_to_array(p, SIZE, DEFAULT) for p in table.paths]).astype(np.float32)
    np.testing.assert_allclose(out[PLAIN], eager_features(base, x), rtol=1e-5, atol=1e-5)
    aug = ex._augment_eager(x, [__import__("zlib").crc32(f"{k}|aug0-s0-x".encode()) & 0x3FFFFFFF for k in table.keys])
    np.testing.assert_allclose(out["aug0-s0-x"], eager_features(base, aug), rtol=1e-4, atol=1e-4)
    again = compute_features(table, [PLAIN], FeatureCache(tmp_path / "cache", "m"), ex, progress=False)
    assert np.array_equal(again[PLAIN], out[PLAIN])  # read back from the cache
