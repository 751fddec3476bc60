"""The segmentation model in Keras 3: a U-Net on a keras.applications encoder, 3 classes per pixel.

    pixels (S, S, 3) float 0..255, S a multiple of 32
      -> encoder: MobileNetV2 or EfficientNetB0 (include_top=False), skips at 1/2, 1/4, 1/8, 1/16
      -> decoder: 4 x [upsample 2x, concatenate skip, 2 x (Conv3x3, BatchNorm, ReLU)], a last upsample to S
      -> Conv1x1 softmax over (background, cell interior, cell boundary)

The three-class target ("interior + boundary") is how U-Nets separate touching cells without
StarDist or Cellpose: the boundary class keeps neighbours apart, and instances come back from
the interior map (`instances`): connected components of the interior are the seeds of a
watershed over the foreground (interior or boundary). The whole network trains (encoder
included), Adam, sparse categorical cross-entropy.

Weights (`segment.weights`, the conventions of `classify`):
- `imagenet`: the encoder's ImageNet weights (Keras cache or download);
- `none`: random encoder, the full-width network trained from scratch;
- `tiny`: random encoder at a quarter of the width (MobileNetV2 alpha 0.35) and a narrow decoder,
  for tests and smoke runs;
- a path: a `.weights.h5` file of the encoder (as written by `encoder.save_weights`).
`tiny` and `none` make a smoke run: the report says its numbers mean little.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from analysis.keras import import_keras
from prompts.errors import UserError
from prompts.files import sha256_file

BACKBONES = ["MobileNetV2", "EfficientNetB0"]
N_CLASSES = 3  # background, interior, boundary
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
# skip-connection layers at strides 2, 4, 8, 16 and the bottleneck at 32 (the layer names of keras.applications)
_SKIPS = {
    "MobileNetV2": ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "block_16_project"],
    "EfficientNetB0": ["block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
                       "block6a_expand_activation", "top_activation"],
}
SMOKE_WEIGHTS = ("tiny", "none")


def check_backbone(backbone: str) -> str:
    name = {b.lower(): b for b in BACKBONES}.get(str(backbone).lower())
    if name is None:
        raise UserError(f"--backbone {backbone}: unknown; choose one of {', '.join(BACKBONES)}")
    return name


def check_image_size(size: int) -> int:
    if size < 32 or size % 32:
        raise UserError(f"--image-size {size}: the U-Net needs a multiple of 32 pixels (e.g. 64, 128, 256)")
    return size


def normalize_weights(weights: str | None) -> str:
    """'imagenet', 'tiny', 'none', or an existing file path; anything else is a UserError."""
    w = "none" if weights is None else str(weights)
    if w.lower() in ("none", "null", ""):
        return "none"
    if w.lower() in ("imagenet", "tiny"):
        return w.lower()
    if not Path(w).is_file():
        raise UserError(f"--weights {weights}: no such file; pass imagenet, tiny, none, or the path of an encoder .weights.h5 file")
    return w


def weights_id(weights: str | None) -> str:
    """'imagenet', 'tiny', 'none' or 'file-<sha12>': the weights' identity for fingerprints."""
    w = normalize_weights(weights)
    return w if w in ("imagenet", "tiny", "none") else "file-" + sha256_file(w)[:12]


def _encoder(keras, name: str, weights: str, size: int):
    """The keras.applications encoder on (S, S, 3) inputs in its own value range."""
    shape = (size, size, 3)
    if name == "MobileNetV2":
        kwargs = {"alpha": 0.35} if weights == "tiny" else {}
        app = keras.applications.MobileNetV2
    else:
        kwargs = {}
        app = keras.applications.EfficientNetB0
    if weights == "imagenet":
        try:
            return app(include_top=False, weights="imagenet", input_shape=shape, **kwargs)
        except Exception as err:  # offline: the download fails
            target = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
            raise UserError(f"ImageNet weights for {name} are not in the Keras cache and cannot be downloaded "
                            f"({err.__class__.__name__}); put the notop .h5 file in {target}, or pass --weights none "
                            "or tiny (smoke) or a weights file") from None
    enc = app(include_top=False, weights=None, input_shape=shape, **kwargs)
    if weights not in ("tiny", "none"):
        try:
            enc.load_weights(weights)
        except Exception as err:
            raise UserError(f"--weights {weights}: cannot load into {name} at {size}px: {err}".splitlines()[0]) from None
    return enc


def build_unet(backbone: str = "MobileNetV2", weights: str | None = "none", image_size: int = 256, seed: int = 0):
    """The U-Net: (batch, S, S, 3) float 0..255 -> (batch, S, S, 3) class probabilities."""
    keras = import_keras()
    name = check_backbone(backbone)
    size = check_image_size(image_size)
    w = normalize_weights(weights)
    keras.utils.set_random_seed(seed)
    enc = _encoder(keras, name, w, size)
    skips = [enc.get_layer(n).output for n in _SKIPS[name]]
    feature = keras.Model(enc.input, skips, name=f"{name}_encoder")
    inp = keras.Input((size, size, 3), name="pixels")
    *skip_maps, x = feature(_input_range(keras, name, inp))
    widths = (64, 32, 16, 8) if w == "tiny" else (256, 128, 64, 32)
    init = keras.initializers.HeNormal(seed=seed)
    for i, (skip, width) in enumerate(zip(reversed(skip_maps), widths)):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up{i}")(x)
        x = keras.layers.Concatenate(name=f"cat{i}")([x, skip])
        for j in range(2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=init, name=f"dec{i}_conv{j}")(x)
            x = keras.layers.BatchNormalization(name=f"dec{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"dec{i}_relu{j}")(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up_last")(x)
    x = keras.layers.Conv2D(widths[-1], 3, padding="same", activation="relu", kernel_initializer=init, name="last_conv")(x)
    out = keras.layers.Conv2D(N_CLASSES, 1, activation="softmax", name="classes",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    return keras.Model(inp, out, name=f"unet_{name}")


def _input_range(keras, name: str, x):
    """MobileNetV2 expects -1..1; EfficientNet rescales 0..255 itself."""
    if name == "MobileNetV2":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(x)
    return x


def build_feature_model(backbone: str, weights: str | None, image_size: int, seed: int = 0):
    """The encoder alone, globally average-pooled: (batch, S, S, 3) float 0..255 -> (batch, F) (realism features)."""
    keras = import_keras()
    name = check_backbone(backbone)
    size = check_image_size(image_size)
    keras.utils.set_random_seed(seed)
    enc = _encoder(keras, name, normalize_weights(weights), size)
    inp = keras.Input((size, size, 3), name="pixels")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(enc(_input_range(keras, name, inp)))
    return keras.Model(inp, pooled, name=f"{name}_features")


def compile_unet(model, learning_rate: float = 1e-3) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")


def model_key(backbone: str, weights: str | None, image_size: int, seed: int) -> str:
    """Identity of the initial network, e.g. 'MobileNetV2-64-tiny-s0-1a2b3c4d' (Keras version and backend included)."""
    import keras

    ident = f"{check_backbone(backbone)}|{weights_id(weights)}|{image_size}|s{seed}|unet-v1|keras-{keras.__version__}|{keras.backend.backend()}"
    return f"{check_backbone(backbone)}-{image_size}-{weights_id(weights)}-s{seed}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- targets and instances


def targets(labels: np.ndarray) -> np.ndarray:
    """(H, W) instance labels -> (H, W) uint8 classes: 0 background, 1 interior, 2 boundary.

    The boundary is each instance's own outermost pixel ring (skimage `find_boundaries`, mode
    'inner'), so two touching cells are separated by two boundary rings.
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    out = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    out[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    return out


def instances(probs: np.ndarray, min_size: int = 4) -> np.ndarray:
    """(H, W, 3) class probabilities -> (H, W) int32 instance labels (0 background).

    Seeds: connected components of the pixels whose most likely class is interior (components
    smaller than `min_size` pixels dropped). The watershed on the negated interior probability
    grows each seed over the foreground (interior or boundary); foreground pixels no seed
    reaches stay background.
    """
    from skimage.measure import label
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    cls = probs.argmax(axis=-1)
    interior = cls == INTERIOR
    if min_size > 1:
        interior = remove_small_objects(interior, max_size=min_size - 1) if _new_skimage() else remove_small_objects(interior, min_size)
    seeds = label(interior, connectivity=1)
    if seeds.max() == 0:
        return np.zeros(cls.shape, np.int32)
    foreground = cls != BACKGROUND
    return watershed(-probs[..., INTERIOR], seeds, mask=foreground).astype(np.int32)


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        yield layer


def _new_skimage() -> bool:
    """scikit-image >= 0.26 names the size limit `max_size` (`min_size` is deprecated)."""
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters


# ---------------------------------------------------------------- training and prediction


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip and 90-degree rotation of each image (n, S, S, 3) and its target (n, S, S)."""
    x, y = x.copy(), y.copy()
    for i in range(len(x)):
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        xi, yi = np.rot90(x[i], k), np.rot90(y[i], k)
        if flip:
            xi, yi = xi[:, ::-1], yi[:, ::-1]
        x[i], y[i] = xi, yi
    return x, y


class Trainer:
    """One compiled U-Net reused by every run: `reset()` restores the same initial weights and optimizer state.

    Building and compiling per (fold, mix) costs a graph trace each time; the reset gives every
    run the same start, so results do not depend on the order of runs.
    """

    def __init__(self, backbone: str, weights: str | None, image_size: int, seed: int, learning_rate: float):
        self.model = build_unet(backbone, weights, image_size, seed)
        compile_unet(self.model, learning_rate)
        self.model.optimizer.build(self.model.trainable_variables)
        self._init = [np.array(v) for v in self.model.get_weights()]
        self._opt = [np.array(v) for v in self.model.optimizer.variables]

    def reset(self) -> None:
        self.model.set_weights(self._init)
        for v, init in zip(self.model.optimizer.variables, self._opt):
            v.assign(init)

    def train(self, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, seed: int, augment_on: bool = True) -> list[float]:
        """Train from the initial weights on x (n, S, S, 3) float32 0..255, y (n, S, S) uint8 -> loss per epoch."""
        self.reset()  # the network has no random layers: numpy's rng (order, augmentation) is all the randomness
        rng = np.random.default_rng(seed)
        losses = []
        for _ in range(epochs):
            xe, ye = augment(x, y, rng) if augment_on else (x, y)
            order = _fill_batches(rng.permutation(len(xe)), batch_size)
            h = self.model.fit(xe[order], ye[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
            losses.append(float(h.history["loss"][-1]))
        self.recalibrate_batchnorm(x, rng)
        return losses

    def recalibrate_batchnorm(self, x: np.ndarray, rng: np.random.Generator, max_images: int = 64) -> None:
        """Set every BatchNorm's moving statistics to its statistics on (up to 64 of) the training images.

        With few pairs a run takes tens of steps, and the moving averages (momentum 0.99-0.999)
        are still near their initial values when training ends: in inference mode the network
        then predicts background everywhere although its training loss fell. Re-estimating the
        statistics once after training ("precise BN") fixes that and changes no learned weight.
        """
        import keras

        bns = [l for l in _all_layers(self.model) if isinstance(l, keras.layers.BatchNormalization)]
        saved = [l.momentum for l in bns]
        pick = np.sort(rng.permutation(len(x))[:max_images])
        for l in bns:
            l.momentum = 0.0
        try:
            self.model(x[pick], training=True)
        finally:
            for l, m in zip(bns, saved):
                l.momentum = m

    def predict(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """(n, S, S, 3) -> (n, S, S, 3) class probabilities."""
        order = _fill_batches(np.arange(len(x)), batch_size)
        return self.model.predict(x[order], batch_size=batch_size, verbose=0)[: len(x)]


def _fill_batches(order: np.ndarray, batch_size: int) -> np.ndarray:
    """`order` wrapped around until its length is a multiple of batch_size.

    Every batch then has the same shape, so the compiled training and prediction functions are
    traced once for all runs instead of again for each run's smaller last batch (seconds each).
    """
    n = len(order)
    extra = (-n) % batch_size
    return np.concatenate([order, np.resize(order, extra)]) if extra else order
