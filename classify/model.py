"""The study's classifier in Keras 3 (any backend): frozen EfficientNet base + small head.

    pixels (S, S, 3) float 0..255
      -> [augmentation: flip, rotation 0.15, translation 0.1, contrast 0.1]   (training only)
      -> EfficientNetBx(include_top=False, pooling="avg")  frozen, inference-mode BN  -> (F,)
      -> BatchNormalization -> Dropout(0.2) -> Dense(n_classes, softmax)          (the head)

Adam (lr 1e-3), categorical cross-entropy. The head is its own `keras.Model`
so that it can be trained alone on cached base features (features.py) or inside
the full model (the naive path), with identical, seeded initial weights.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from analysis.keras import calibrate_batchnorm, import_keras  # noqa: F401  (re-exported: callers of classify.model keep working)
from prompts.errors import UserError
from prompts.files import sha256_file

BACKBONES = [f"EfficientNetB{i}" for i in range(8)]
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def keras_home() -> Path:
    """Where Keras caches downloads ($KERAS_HOME, else ~/.keras)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def weights_id(weights: str | None, seed: int) -> str:
    """A short identity of the base weights, for cache keys: 'imagenet', 'file-<sha12>', 'none-s<seed>'."""
    w = normalize_weights(weights)
    if w is None:
        return f"none-s{seed}"
    if w == "imagenet":
        return "imagenet"
    return "file-" + sha256_file(w)[:12]


def normalize_weights(weights: str | None) -> str | None:
    """'imagenet', an existing file path, or None; anything else is a UserError."""
    if weights is None or str(weights).lower() in ("none", "null", ""):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    if str(weights).lower() == "calibrated":  # a study-file keyword the workflow turns into a file
        raise UserError("--weights calibrated: the workflow builds that file; outside it, write one with "
                        "`python -m classify calibrate-weights --data DATA --output FILE.weights.h5` and pass --weights FILE.weights.h5")
    if not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file; pass imagenet, none, or the path of an EfficientNet weights file (.h5/.weights.h5)")
    return str(weights)


def check_backbone(backbone: str) -> str:
    name = {b.lower(): b for b in BACKBONES}.get(str(backbone).lower())
    if name is None:
        raise UserError(f"--backbone {backbone}: unknown; choose one of {', '.join(BACKBONES)}")
    return name


def build_base(backbone: str, weights: str | None, image_size: int, seed: int = 0):
    """The frozen feature extractor: (batch, S, S, 3) float 0..255 -> (batch, F) pooled features.

    weights: 'imagenet' (Keras cache or download; offline a UserError saying where
    to put the file), a weights-file path (ImageNet input normalisation restored,
    see below), or None (random init, seeded by `seed`).
    """
    import keras

    name = check_backbone(backbone)
    if image_size < 32:
        raise UserError(f"--image-size {image_size}: EfficientNet needs at least 32 pixels")
    w = normalize_weights(weights)
    app = getattr(keras.applications, name)
    shape = (image_size, image_size, 3)
    if w is None:
        keras.utils.set_random_seed(seed)
        base = app(include_top=False, weights=None, input_shape=shape, pooling="avg")
    elif w == "imagenet":
        target = keras_home() / "models" / f"{name.lower()}_notop.h5"
        try:
            base = app(include_top=False, weights="imagenet", input_shape=shape, pooling="avg")
        except Exception as err:  # offline: urllib/HTTP errors surface as Exception from get_file
            raise UserError(
                f"ImageNet weights for {name} are not in the Keras cache and cannot be downloaded ({err.__class__.__name__}); "
                f"put {name.lower()}_notop.h5 at {target} ($KERAS_HOME/models/), or pass --weights PATH or --weights none"
            ) from None
    else:
        with warnings.catch_warnings(record=True) as caught:  # Keras warns, and goes on, when layers do not match
            warnings.simplefilter("always")
            try:
                core = app(include_top=False, weights=w, input_shape=shape, pooling="avg")
            except Exception as err:
                raise UserError(f"--weights {w}: cannot load into {name} at {image_size}px: {err}".splitlines()[0]) from None
        skipped = [c for c in caught if "freshly-initialized" in str(c.message) or "Skipping" in str(c.message)]
        if skipped:  # a partial load would leave layers random: refuse rather than compute meaningless features
            raise UserError(f"--weights {w}: cannot load into {name} at {image_size}px: {len(skipped)} layer group(s) "
                            "do not match the file; pass weights made for this backbone")
        base = _with_imagenet_std(core, shape, name)
    base.trainable = False
    return base


def _with_imagenet_std(core, shape, name: str):
    """Keras builds a model from a weights *path* without the extra ImageNet std
    rescaling that weights="imagenet" adds after its Normalization layer. Both are
    affine per channel, so an equivalent pre-scaling restores it:
    x' = 255*m + (x - 255*m) / sqrt(std)."""
    import keras

    mean = 255.0 * np.array(IMAGENET_MEAN_RGB, np.float32)
    scale = 1.0 / np.sqrt(np.array(IMAGENET_STDDEV_RGB, np.float32))
    inp = keras.Input(shape)
    x = keras.layers.Rescaling(scale=scale, offset=mean * (1 - scale), name="imagenet_std")(inp)
    return keras.Model(inp, core(x), name=f"{name}_from_file")


def augmentation_layers(seed: int = 0) -> list:
    """The classical augmentation of the Keras EfficientNet fine-tuning example, seeded."""
    import keras

    return [
        keras.layers.RandomRotation(factor=0.15, seed=seed, name="augment_rotation"),
        keras.layers.RandomTranslation(height_factor=0.1, width_factor=0.1, seed=seed + 1, name="augment_translation"),
        keras.layers.RandomFlip(seed=seed + 2, name="augment_flip"),
        keras.layers.RandomContrast(factor=0.1, seed=seed + 3, name="augment_contrast"),
    ]


def augmentation_id() -> str:
    """8 hex digits identifying the augmentation layers' settings (factors, modes; not seeds or names)."""
    import json

    configs = []
    for layer in augmentation_layers(0):
        cfg = {k: v for k, v in layer.get_config().items() if k not in ("name", "seed")}
        configs.append([layer.__class__.__name__, cfg])
    return hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:8]


def reseed_layers(layers: list, seed: int) -> None:
    """Reset the random state of augmentation layers so their next call depends only on `seed`."""
    for i, layer in enumerate(layers):
        for gen in getattr(layer, "_seed_generators", []):
            gen.state.assign(np.array([(seed * 7 + i) % 2_147_483_647, 0], dtype=gen.state.dtype))


def build_head(n_features: int, n_classes: int, seed: int = 0, dropout: float = 0.2):
    """The trainable head: (batch, F) features -> (batch, C) class probabilities."""
    import keras

    inp = keras.Input((n_features,), name="features")
    x = keras.layers.BatchNormalization(name="head_bn")(inp)
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    out = keras.layers.Dense(
        n_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="head_dense",
    )(x)
    return keras.Model(inp, out, name="head")


def build_full(base, head, image_size: int, augment: bool, seed: int = 0):
    """The naive end-to-end model: pixels -> [augmentation] -> frozen base -> head."""
    import keras

    inp = keras.Input((image_size, image_size, 3), name="pixels")
    x = inp
    if augment:
        for layer in augmentation_layers(seed):
            x = layer(x)
    x = _inference_layer(base)(x)
    return keras.Model(inp, head(x), name="classifier")


def _inference_layer(base):
    """Wrap the base so it always runs in inference mode (BN statistics and drop-connect off).

    Keras 3 does not keep an explicit `training=False` on a nested model inside a
    functional model: with `base(x, training=False)` the EfficientNet's
    stochastic-depth dropout still runs during `fit`, so the naive path would train
    on different features than the cached path. A layer whose call passes
    training=False at run time does keep it.
    """
    import keras

    class InferenceOnly(keras.layers.Layer):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, x):
            return self.inner(x, training=False)

        def compute_output_shape(self, input_shape):
            return self.inner.compute_output_shape(input_shape)

    return InferenceOnly(base, name="frozen_base")


def compile_model(model, learning_rate: float = 1e-3) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy")


def unfreeze_top(base, n_layers: int) -> int:
    """Second phase: make the top `n_layers` layers of the base trainable, BatchNorm kept frozen.

    Returns the number of layers unfrozen (BN layers excluded).
    """
    import keras

    core = base
    inner = [l for l in base.layers if isinstance(l, keras.Model)]
    if inner:  # the weights-file wrapper holds the application as one layer
        core = inner[0]
    base.trainable = True
    core.trainable = True
    count = 0
    layers = core.layers
    for i, layer in enumerate(layers):
        top = i >= len(layers) - n_layers
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
        count += int(layer.trainable)
    return count


def model_key(backbone: str, weights: str | None, image_size: int, seed: int) -> str:
    """Identity of the frozen base for the feature cache, e.g. 'EfficientNetB7-600-imagenet-1a2b3c4d'."""
    import keras

    name = check_backbone(backbone)
    wid = weights_id(weights, seed)
    # pixels policy version 1; the Keras version and backend change layer numerics rarely but may
    ident = f"{name}|{wid}|{image_size}|pixels-v1|keras-{keras.__version__}|{keras.backend.backend()}"
    h = hashlib.sha256(ident.encode()).hexdigest()[:8]
    return f"{name}-{image_size}-{wid}-{h}"


def write_calibrated_weights(backbone: str, image_size: int, x: np.ndarray, path, seed: int = 0) -> Path:
    """Random weights (seeded) with BN statistics calibrated on images x; saved as a Keras .weights.h5 file."""
    path = Path(path)
    import keras

    name = check_backbone(backbone)
    keras.utils.set_random_seed(seed)
    shape = (image_size, image_size, 3)
    app = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=shape, pooling="avg")
    calibrate_batchnorm(_with_imagenet_std(app, shape, name), x)  # the graph build_base makes for a file
    path.parent.mkdir(parents=True, exist_ok=True)
    app.save_weights(path)
    import h5py

    with h5py.File(path, "a") as f:  # travels with the file, so a report can say its numbers mean nothing
        f.attrs[STAND_IN_ATTR] = "random weights with calibrated BatchNorm (classify calibrate-weights), not ImageNet"
    return path


STAND_IN_ATTR = "cellsynth_stand_in"


def is_stand_in_weights(path) -> bool:
    """True for a weights file written by `write_calibrated_weights` (a smoke stand-in); False for any other file."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return STAND_IN_ATTR in f.attrs
    except (OSError, ImportError):
        return False


class Resettable:
    """A compiled model reused across runs: `reset(seed)` restores a freshly seeded start.

    Building and compiling a model per (fold, mix) costs a graph trace each time
    (seconds for a full EfficientNet). Instead the model is built once; each run
    resets the head weights to those of `build_head(seed=...)`, zeroes the
    optimizer state, and reseeds dropout and augmentation — the same start as a
    fresh build, so results do not depend on the order of runs.
    """

    def __init__(self, model, head, n_features: int, n_classes: int):
        self.model, self.head = model, head
        self.n_features, self.n_classes = n_features, n_classes
        opt = model.optimizer
        opt.build(model.trainable_variables)
        self._opt_init = [np.array(keras_numpy(v)) for v in opt.variables]

    def reset(self, head_seed: int, aug_seed: int = 0):
        self.head.set_weights(initial_head_weights(self.head, head_seed))
        for v, init in zip(self.model.optimizer.variables, self._opt_init):
            v.assign(init)
        for layer in self.head.layers:
            for gen in getattr(layer, "_seed_generators", []):
                gen.state.assign(np.array([head_seed, 0], dtype=gen.state.dtype))
        aug = [l for l in self.model.layers if l.name.startswith("augment_")]
        reseed_layers(aug, aug_seed)
        return self.model


def initial_head_weights(head, seed: int) -> list[np.ndarray]:
    """The weights `build_head(..., seed=seed)` starts from, without building a model (much faster).

    BatchNormalization: gamma 1, beta 0, moving mean 0, moving variance 1; Dense:
    GlorotUniform(seed) kernel, zero bias — the same initializers as build_head.
    """
    import keras

    out = []
    for w in head.weights:
        name = w.path.split("/")[-1]
        shape = tuple(w.shape)
        if name == "kernel":
            out.append(keras_numpy(keras.initializers.GlorotUniform(seed=seed)(shape)))
        elif name in ("gamma", "moving_variance"):
            out.append(np.ones(shape, np.float32))
        else:  # beta, moving_mean, bias
            out.append(np.zeros(shape, np.float32))
    return out


def keras_numpy(v):
    import keras

    return keras.ops.convert_to_numpy(v)
