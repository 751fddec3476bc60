"""The per-cell classifiers, side by side in the same folds.

- `reference`: CellProfiler's recipe in code. Per cell, `skimage.measure.regionprops` shape (area,
  perimeter, eccentricity, solidity, extent, axis lengths, form factor) and intensity (mean, sd, min,
  max, median, integrated, per-channel means) of the cell's own pixels, and GLCM texture
  (`skimage.feature.graycomatrix`: contrast, dissimilarity, homogeneity, energy, correlation, ASM at
  distances 1 and 2, averaged over four angles) of its masked pixels; a scikit-learn random forest.
- `cnn`: a frozen Keras EfficientNet on the crops (resized to `cnn_size`; with `mask_channel`, the input
  is gray, gray inside the cell, mask) giving pooled features once per crop, and a trained softmax head.

Features of either kind depend on the crop alone, never on the fold or the regime, so they are computed
once per crop key (`FeatureCache`, on disk) and one more regime costs only the fits.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from analysis.keras import calibrate_batchnorm, import_keras
from prompts.errors import UserError
from prompts.files import atomic_path

log = logging.getLogger(__name__)

REFERENCE, CNN = "reference", "cnn"
MODELS = (REFERENCE, CNN)
REFERENCE_VERSION = 1  # bump when the feature list changes: the cache keys follow it
_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
_GLCM_LEVELS = 32
SHAPE_NAMES = ["area", "perimeter", "eccentricity", "solidity", "extent", "major_axis", "minor_axis", "form_factor"]
INTENSITY_NAMES = ["mean", "sd", "min", "max", "median", "integrated", "mean_c0", "mean_c1", "mean_c2"]
TEXTURE_NAMES = [f"{p}_d{d}" for d in (1, 2) for p in _GLCM_PROPS]
REFERENCE_NAMES = SHAPE_NAMES + INTENSITY_NAMES + TEXTURE_NAMES


# --------------------------------------------------------------------------- the reference method


def _texture(gray: np.ndarray, mask: np.ndarray) -> list[float]:
    """GLCM properties of the masked pixels (quantised to 31 levels, 0 = outside), averaged over 4 angles."""
    from skimage.feature import graycomatrix, graycoprops

    inside = gray[mask]
    lo, hi = float(inside.min()), float(inside.max())
    q = np.zeros(gray.shape, dtype=np.uint8)
    q[mask] = 1 + np.round((inside - lo) / (hi - lo) * (_GLCM_LEVELS - 2)).astype(np.uint8) if hi > lo else 1
    glcm = graycomatrix(q, distances=[1, 2], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=_GLCM_LEVELS)
    glcm = glcm[1:, 1:].astype(np.float64)  # pairs with a pixel outside the cell say nothing about its texture
    with np.errstate(invalid="ignore", divide="ignore"):  # a one-pixel-wide cell has no pair at distance 2: 0
        props = np.stack([np.nan_to_num(graycoprops(glcm, p)).mean(axis=1) for p in _GLCM_PROPS])  # (props, distances)
    return props.T.ravel().tolist()  # distance-major, as TEXTURE_NAMES


def reference_features(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shape, intensity and texture features of one cell (CellProfiler's recipe).

    Parameters
    ----------
    pixels : ndarray, shape (S, S, C), uint8
    mask : ndarray, shape (S, S), bool
        The cell's own pixels in the crop.

    Returns
    -------
    ndarray, shape (len(REFERENCE_NAMES),), float64
        Zeros for an empty mask.
    """
    from skimage.measure import regionprops

    if not mask.any():
        return np.zeros(len(REFERENCE_NAMES))
    gray = pixels.astype(np.float64).mean(axis=-1)
    (p,) = regionprops(mask.astype(np.uint8), intensity_image=gray)
    perimeter = float(p.perimeter)
    shape = [p.area, perimeter, p.eccentricity, p.solidity, p.extent, p.axis_major_length, p.axis_minor_length,
             4 * np.pi * p.area / perimeter ** 2 if perimeter > 0 else 0.0]
    inside = gray[mask]
    channels = [float(pixels[..., min(c, pixels.shape[-1] - 1)][mask].mean()) for c in range(3)]
    intensity = [inside.mean(), inside.std(), inside.min(), inside.max(), np.median(inside), inside.sum(), *channels]
    return np.asarray([*shape, *intensity, *_texture(gray, mask)], dtype=np.float64)


def reference_id() -> str:
    return f"reference-v{REFERENCE_VERSION}"


def fit_forest(x: np.ndarray, y: np.ndarray, trees: int, seed: int):
    """The reference method's classifier: a scikit-learn random forest (n_jobs 1: same numbers everywhere)."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1).fit(x, y)


# --------------------------------------------------------------------------- the cnn


def cnn_inputs(pixels: np.ndarray, masks: np.ndarray, size: int, mask_channel: bool) -> np.ndarray:
    """Crops as the cnn reads them: (n, size, size, 3) float32 0..255.

    Parameters
    ----------
    pixels : ndarray, shape (n, S, S, C), uint8
    masks : ndarray, shape (n, S, S), bool
    size : int
        The cnn's input side in pixels (bilinear resize).
    mask_channel : bool
        True: channels are (gray, gray inside the cell, mask x 255); False: the crop's colour (gray replicated).
    """
    from PIL import Image

    out = np.empty((len(pixels), size, size, 3), dtype=np.float32)
    for i, (px, m) in enumerate(zip(pixels, masks)):
        if mask_channel:
            gray = px.astype(np.float32).mean(axis=-1)
            arr = np.stack([gray, gray * m, 255.0 * m], axis=-1)
        else:
            arr = np.repeat(px, 3, axis=-1) if px.shape[-1] == 1 else px
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return out


def _check_backbone(backbone: str) -> str:
    names = {f"efficientnetb{i}": f"EfficientNetB{i}" for i in range(8)}
    name = names.get(str(backbone).lower())
    if name is None:
        raise UserError(f"--backbone {backbone}: unknown; choose one of EfficientNetB0..EfficientNetB7")
    return name


def check_weights(weights: str | None) -> str | None:
    """'imagenet', 'calibrated', an existing file, or None (random); anything else is a UserError."""
    w = str(weights).lower() if weights is not None else "none"
    if w in ("none", "null", ""):
        return None
    if w in ("imagenet", "calibrated"):
        return w
    if not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file; pass imagenet, calibrated, none, or an EfficientNet .weights.h5 file")
    return str(weights)


def build_cnn_base(backbone: str, weights: str | None, size: int, seed: int, calibration: np.ndarray | None = None):
    """The frozen EfficientNet: (n, size, size, 3) float 0..255 -> (n, F) pooled features.

    calibration: (n, size, size, 3) inputs for `weights: calibrated` (the monoculture crops: never a test cell).
    """
    keras = import_keras()
    app = getattr(keras.applications, _check_backbone(backbone))
    shape = (size, size, 3)
    keras.utils.set_random_seed(seed)
    if weights == "imagenet":
        try:
            base = app(include_top=False, weights="imagenet", input_shape=shape, pooling="avg")
        except Exception as err:  # offline: the download fails with urllib/HTTP errors
            raise UserError(f"ImageNet weights for {backbone} are not in the Keras cache and cannot be downloaded "
                            f"({err.__class__.__name__}); put them in $KERAS_HOME/models/, or pass --weights calibrated "
                            "(an offline smoke stand-in) or a weights file") from None
    elif weights in (None, "calibrated"):
        base = app(include_top=False, weights=None, input_shape=shape, pooling="avg")
        if weights == "calibrated":
            if calibration is None or len(calibration) < 2:
                raise UserError("--weights calibrated needs at least 2 monoculture cells to calibrate on; pass imagenet or a weights file")
            calibrate_batchnorm(base, calibration)
    else:
        try:
            base = app(include_top=False, weights=weights, input_shape=shape, pooling="avg")
        except Exception as err:
            raise UserError(f"--weights {weights}: cannot load into {backbone} at {size}px: {err}".splitlines()[0]) from None
    base.trainable = False
    return base


def cnn_id(backbone: str, weights: str | None, size: int, mask_channel: bool, seed: int, calibration_keys=()) -> str:
    """The identity of a cnn feature extractor (cache folder name): backbone, weights, input, mask rule."""
    if weights == "calibrated":
        w = "cal-" + hashlib.sha256("|".join(sorted(calibration_keys)).encode()).hexdigest()[:12] + f"-s{seed}"
    elif weights is None:
        w = f"none-s{seed}"
    elif weights == "imagenet":
        w = "imagenet"
    else:
        from prompts.files import sha256_file

        w = "file-" + sha256_file(weights)[:12]
    return f"cnn-{_check_backbone(backbone)}-{w}-{size}px-{'mask' if mask_channel else 'plain'}"


def cnn_features(base, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """(n, F) float32 features of (n, S, S, 3) inputs, in inference mode."""
    if not len(inputs):
        return np.zeros((0, int(base.output_shape[-1])), dtype=np.float32)
    return np.asarray(base.predict(inputs, batch_size=batch_size, verbose=0), dtype=np.float32)


class Head:
    """The cnn's trained head on frozen features: BatchNorm -> Dropout(0.2) -> Dense softmax (Adam)."""

    def __init__(self, n_features: int, n_classes: int, seed: int, learning_rate: float):
        keras = import_keras()
        keras.utils.set_random_seed(seed)
        self.model = keras.Sequential([
            keras.Input((n_features,)),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2, seed=seed),
            keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=seed)),
        ])
        self.model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
        self.n_classes = n_classes

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int) -> "Head":
        self.model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros(0, dtype=int)
        return np.asarray(self.model.predict(x, verbose=0)).argmax(axis=1)


# --------------------------------------------------------------------------- the feature cache


class FeatureCache:
    """Per-crop features of one extractor, kept on disk as CACHE/<extractor id>.npz (keys (n,), feats (n, F)).

    Loaded once, written atomically by `save` after new features were added; a killed run loses only
    the features of its last extraction.
    """

    def __init__(self, folder, extractor: str):
        self.path = Path(folder) / f"{extractor}.npz"
        self.features: dict[str, np.ndarray] = {}
        self.added = 0
        if self.path.is_file():
            try:
                with np.load(self.path) as z:
                    self.features = dict(zip(z["keys"].tolist(), z["feats"]))
            except (OSError, ValueError, KeyError) as err:
                log.warning("feature cache %s unreadable (%s): recomputing", self.path, err)

    def missing(self, keys) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self.features]

    def add(self, keys, feats: np.ndarray) -> None:
        for k, f in zip(keys, feats):
            self.features[k] = np.asarray(f, dtype=np.float32)
        self.added += len(keys)

    def get(self, keys) -> np.ndarray:
        return np.stack([self.features[k] for k in keys]) if len(keys) else np.zeros((0, 0), dtype=np.float32)

    def save(self) -> None:
        if not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.features)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, keys=np.asarray(keys), feats=np.stack([self.features[k] for k in keys]))
        self.added = 0
