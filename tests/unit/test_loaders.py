"""Properties of :mod:`whybox.runs.loaders`: command-line strings to a model, a dataset and a config."""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from whybox.data import PHOTOS, load_digits
from whybox.errors import (
    DataFormatError,
    DatasetNotFoundError,
    InvalidInputError,
    InvalidParameterError,
    UnknownNameError,
    WhyboxError,
)
from whybox.runs.loaders import LoadedModel, load_config, load_inputs, load_model

# A tiny CNN on (B, 3, H, W): conv -> relu -> global pool -> linear (4 classes).
TINY = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width=4, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make():
    return Tiny()


def make_wide():
    return Tiny(width=6)


def make_gray():
    return Tiny(channels=1)


def not_a_model():
    return 42


NUMBER = 3
"""


@pytest.fixture(scope="module")
def digits() -> LoadedModel:
    return load_model("digits-cnn")


@pytest.fixture
def tiny_py(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_model.py"
    path.write_text(TINY)
    return path


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# --------------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------------


def test_digits_cnn_builtin_is_in_eval_mode_with_digit_labels_and_gray_display(digits: LoadedModel) -> None:
    assert digits.name == "digits-cnn" and not digits.module.training
    assert digits.labels == [str(c) for c in range(10)]
    x = load_digits("test")[0][0]
    shown = digits.display(x)
    assert shown.shape == (8, 8, 3)
    assert all(np.array_equal(shown[:, :, c], x[0].numpy()) for c in range(3))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_file_model_with_saved_weights_reproduces_the_original_outputs(
    tiny_py: Path, tmp_path: Path, suffix: str
) -> None:
    spec = f"{tiny_py}:make"
    original = load_model(spec)
    weights = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(original.module.state_dict(), str(weights))
    else:
        torch.save(original.module.state_dict(), weights)
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    fresh = load_model(spec)  # a new random initialisation: different outputs
    assert not torch.equal(fresh.module(x), original.module(x))
    loaded = load_model(spec, weights=weights)
    assert torch.equal(loaded.module(x), original.module(x))
    assert not loaded.module.training and loaded.name == spec and loaded.labels is None
    assert str(tiny_py.parent) not in sys.path  # the file's folder was on sys.path only during the import


def test_weights_with_other_keys_or_shapes_are_refused_listing_them(tiny_py: Path, tmp_path: Path) -> None:
    state = load_model(f"{tiny_py}:make").module.state_dict()
    renamed = {("head." + k[3:] if k.startswith("fc.") else k): v for k, v in state.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(InvalidParameterError) as info:
        load_model(f"{tiny_py}:make", weights=tmp_path / "renamed.safetensors")
    msg = str(info.value)
    assert "missing keys" in msg and "fc.weight, fc.bias" in msg.replace("fc.bias, fc.weight", "fc.weight, fc.bias")
    assert "unexpected keys" in msg and "head.bias" in msg and "head.weight" in msg
    save_file(load_model(f"{tiny_py}:make_wide").module.state_dict(), str(tmp_path / "wide.safetensors"))
    with pytest.raises(InvalidParameterError, match=r"shape mismatches: conv\.bias \(file \(6,\), model \(4,\)\)"):
        load_model(f"{tiny_py}:make", weights=tmp_path / "wide.safetensors")


def test_weights_paths_that_are_missing_or_of_an_unknown_type_are_refused(tiny_py: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match=r"weights='.*absent\.safetensors': no such file"):
        load_model(f"{tiny_py}:make", weights=tmp_path / "absent.safetensors")
    (tmp_path / "w.h5").write_bytes(b"")
    with pytest.raises(InvalidParameterError, match=r"weights must be a \.safetensors, \.pt, \.pth, \.bin file"):
        load_model(f"{tiny_py}:make", weights=tmp_path / "w.h5")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(DataFormatError, match=r"'.*junk\.pt' cannot be read as a PyTorch file"):
        load_model(f"{tiny_py}:make", weights=tmp_path / "junk.pt")


def test_a_pickled_full_model_needs_trust_and_then_loads_with_a_warning(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        original = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    path = tmp_path / "full.pt"
    torch.save(original, path)
    with pytest.raises(InvalidParameterError, match=r"trust_model_file=True \(command line: --trust-model-file\)"):
        load_model(str(path))
    with pytest.warns(UserWarning, match="arbitrary code"):
        loaded = load_model(str(path), trust_model_file=True)
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(1))
    assert not loaded.module.training  # dropout off: the outputs are deterministic
    assert torch.equal(loaded.module(x), original.eval()(x))


def test_a_torchscript_model_needs_trust_and_then_loads_with_torch_jit(tmp_path: Path) -> None:
    """A torch.jit.save archive failed with torch's own 'use weights_only=False' text, even with trust: it is named,
    and with trust loaded by torch.jit.load."""
    import whybox

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        original = nn.Sequential(nn.Linear(4, 3)).eval()
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated, still common in use
        torch.jit.script(original).save(str(path))
    with pytest.raises(InvalidParameterError, match=r"TorchScript archive .*--trust-model-file"):
        load_model(str(path))
    with pytest.warns(UserWarning, match="runs the code it holds"):
        loaded = load_model(str(path), trust_model_file=True)
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        whybox.explain(loaded.module, x, "saliency", target=0).attributions,
        whybox.explain(original, x, "saliency", target=0).attributions,
    )


def test_a_pickled_model_as_weights_gives_its_state_dict_only_when_trusted(tiny_py: Path, tmp_path: Path) -> None:
    original = load_model(f"{tiny_py}:make").module
    torch.save(original, tmp_path / "full.pt")  # pickles the Tiny class from the imported file
    with pytest.raises(InvalidParameterError, match="--trust-model-file"):
        load_model(f"{tiny_py}:make", weights=tmp_path / "full.pt")
    with pytest.warns(UserWarning, match="arbitrary code"):
        loaded = load_model(f"{tiny_py}:make", weights=tmp_path / "full.pt", trust_model_file=True)
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded.module(x), original(x))


def test_a_state_dict_file_alone_is_not_a_model(tiny_py: Path, tmp_path: Path) -> None:
    torch.save(load_model(f"{tiny_py}:make").module.state_dict(), tmp_path / "w.pt")
    with pytest.raises(InvalidParameterError, match=r"weights only.*--weights"):
        load_model(str(tmp_path / "w.pt"), trust_model_file=True)


def test_a_checkpoint_dict_gives_its_state_dict(tiny_py: Path, tmp_path: Path) -> None:
    original = load_model(f"{tiny_py}:make").module
    torch.save({"model_state_dict": original.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = load_model(f"{tiny_py}:make", weights=tmp_path / "ckpt.pt")
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.module(x), original(x))


@pytest.mark.parametrize(
    ("make_spec", "error", "pattern"),
    [
        (lambda d: f"{d}/absent.py:make", InvalidParameterError, r"absent\.py.*does not exist"),
        (
            lambda d: f"{d}/tiny_model.py:absent",
            InvalidParameterError,
            r"defines no 'absent'.*Tiny, make, make_gray, make_wide",
        ),
        (lambda d: f"{d}/tiny_model.py:NUMBER", InvalidParameterError, r"'NUMBER'.*is a int, not a function"),
        (lambda d: f"{d}/tiny_model.py:not_a_model", InvalidParameterError, r"returned a int.*nn\.Module"),
        (lambda d: f"{d}/tiny_model.py", InvalidParameterError, r"after a colon.*tiny_model\.py:make_model"),
        (lambda d: f"{d}/tiny_model.py:", InvalidParameterError, r"must name a function"),
        (lambda d: f"{d}/broken.py:make", InvalidParameterError, r"importing .*broken\.py.*ZeroDivisionError"),
        (lambda d: f"{d}/w.safetensors", InvalidParameterError, r"weights only.*file\.py:factory"),
        (lambda d: "resnet-50", UnknownNameError, r"unknown model 'resnet-50'.*efficientnet-lite0, digits-cnn"),
    ],
)
def test_bad_model_specs_are_refused_naming_the_spec(
    tiny_py: Path, tmp_path: Path, make_spec: Callable[[Path], str], error: type[Exception], pattern: str
) -> None:
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    spec = make_spec(tmp_path)
    with pytest.raises(error, match=pattern) as info:
        load_model(spec)
    assert repr(spec) in str(info.value) and isinstance(info.value, WhyboxError)


def test_a_fitted_estimator_loads_without_image_support_and_refuses_weights(tmp_path: Path) -> None:
    (tmp_path / "sk.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from sklearn.linear_model import LogisticRegression

            def fitted():
                x = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
                return LogisticRegression().fit(x, ["no", "yes", "no", "yes"])

            def unfitted():
                return LogisticRegression()
            """
        )
    )
    model = load_model(f"{tmp_path}/sk.py:fitted")
    assert model.labels == ["no", "yes"] and model.prepare_image is None
    with pytest.raises(InvalidParameterError, match="not fitted"):
        load_model(f"{tmp_path}/sk.py:unfitted")
    torch.save({"a": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(InvalidParameterError, match="not a torch module"):
        load_model(f"{tmp_path}/sk.py:fitted", weights=tmp_path / "w.pt")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(InvalidParameterError, match="takes no images"):
        load_inputs([str(tmp_path / "a.png")], model)


def test_file_model_images_become_rgb_in_unit_range_without_resizing(tiny_py: Path) -> None:
    model = load_model(f"{tiny_py}:make")
    assert model.prepare_image is not None
    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    x = model.prepare_image(gray)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    assert all(torch.equal(x[c], torch.from_numpy(gray / 255.0).float()) for c in range(3))
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 1] = (255, 0, 0, 255)  # pixel 0 transparent (white after compositing), pixel 1 opaque red
    assert model.prepare_image(rgba)[:, 0, :].tolist() == [[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    assert np.array_equal(model.display(x), np.repeat((gray / 255.0).astype(np.float32)[:, :, None], 3, axis=2))


def test_a_grayscale_cnn_reads_image_files_as_one_channel(tiny_py: Path, tmp_path: Path) -> None:
    """A model whose first convolution reads one channel got every image as 3-channel RGB (a raw conv error on each
    sample); it gets (1, H, W): a grayscale file as it is, a colour one by rgb2gray."""
    from skimage.color import rgb2gray

    model = load_model(f"{tiny_py}:make_gray")
    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    ds = load_inputs([str(_png(tmp_path / "a.png", gray)), str(_png(tmp_path / "b.png", rgb))], model)
    assert ds.x.shape == (2, 1, 2, 2)
    assert torch.equal(ds.x[0, 0], torch.from_numpy(gray / 255.0).float())
    torch.testing.assert_close(ds.x[1, 0], torch.from_numpy(rgb2gray(rgb / 255.0)).float())
    assert model.module(ds.x).shape == (2, 4)


def test_a_factory_adapter_with_labels_names_the_classes_and_keeps_image_support(tiny_py: Path) -> None:
    """A factory may return whybox.adapt(model, labels=[...]): those names are the loaded model's class names, and
    the model still takes images."""
    tiny_py.write_text(
        tiny_py.read_text() + "\n\ndef named():\n    import whybox\n\n"
        "    return whybox.adapt(Tiny(), labels=['cat', 'dog', 'fox', 'owl'])\n"
    )
    model = load_model(f"{tiny_py}:named")
    assert model.labels == ["cat", "dog", "fox", "owl"]
    assert model.prepare_image is not None


# --------------------------------------------------------------------------------------------------
# load_inputs
# --------------------------------------------------------------------------------------------------


def test_an_image_file_for_digits_equals_grayscale_then_antialiased_resize(digits: LoadedModel, tmp_path: Path) -> None:
    from skimage.color import rgb2gray
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 16), dtype=np.uint8)
    rgb = rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)
    ds = load_inputs([str(_png(tmp_path / "g.png", gray)), str(_png(tmp_path / "c.png", rgb))], digits)
    by_hand = [
        resize(gray / 255.0, (8, 8), anti_aliasing=True),
        resize(rgb2gray(rgb / 255.0), (8, 8), anti_aliasing=True),
    ]
    expected = torch.from_numpy(np.stack(by_hand).astype(np.float32)[:, None])
    assert torch.equal(ds.x, expected)
    assert ds.names == ["g.png", "c.png"] and ds.kind == "image" and ds.labels is None


def test_digits_test_for_digits_cnn_is_load_digits_unchanged_with_labels(digits: LoadedModel) -> None:
    ds = load_inputs(["digits-test"], digits)
    x, y = load_digits("test")
    assert torch.equal(ds.x, x) and ds.labels is not None and torch.equal(ds.labels, y)
    assert ds.names[:2] == ["digits-test-0000", "digits-test-0001"] and len(set(ds.names)) == len(ds.names) == 450


def test_photos_go_through_the_models_own_preparation(digits: LoadedModel) -> None:
    from whybox.data import photo

    assert digits.prepare_image is not None
    ds = load_inputs(["photos"], digits, limit=2)
    assert ds.names == list(PHOTOS[:2])
    assert torch.equal(ds.x, torch.stack([digits.prepare_image(photo(n)) for n in PHOTOS[:2]]))


def test_folders_load_sorted_skip_hidden_and_other_files_and_dedupe_names(tiny_py: Path, tmp_path: Path) -> None:
    model = load_model(f"{tiny_py}:make")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    for folder, name, value in [(one, "b.png", 20), (one, "a.png", 10), (one, ".hidden.png", 99), (two, "a.png", 30)]:
        _png(folder / name, np.full((3, 3), value, dtype=np.uint8))
    (one / "notes.txt").write_text("not an image")
    (one / "sub").mkdir()
    ds = load_inputs([str(one), str(two), str(one / "a.png")], model)
    assert ds.names == ["a.png", "b.png", "a.png#2", "a.png#3"]
    assert [round(float(v) * 255) for v in ds.x[:, 0, 0, 0]] == [10, 20, 30, 10]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(DatasetNotFoundError, match=r"'.*empty' holds no image files"):
        load_inputs([str(tmp_path / "empty")], model)


def test_images_of_different_sizes_for_a_non_resizing_model_name_both_files(tiny_py: Path, tmp_path: Path) -> None:
    model = load_model(f"{tiny_py}:make")
    _png(tmp_path / "a.png", np.zeros((3, 3), dtype=np.uint8))
    _png(tmp_path / "b.png", np.zeros((4, 3), dtype=np.uint8))
    with pytest.raises(InvalidInputError, match=r"'a\.png' and 'b\.png'.*\(3, 3, 3\) and \(3, 4, 3\)"):
        load_inputs([str(tmp_path)], model)


def test_npy_and_npz_round_trip_exactly(digits: LoadedModel, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.random((3, 1, 8, 8)).astype(np.float32)
    labels = np.array([4, 0, 9])
    np.save(tmp_path / "imgs.npy", images)
    np.savez(tmp_path / "more.npz", x=images[:2], y=labels[:2])
    ds = load_inputs([str(tmp_path / "imgs.npy")], digits)
    assert torch.equal(ds.x, torch.from_numpy(images)) and ds.kind == "image"
    assert ds.names == ["imgs-0", "imgs-1", "imgs-2"] and ds.labels is None
    ds = load_inputs([str(tmp_path / "more.npz")], digits)
    assert torch.equal(ds.x, torch.from_numpy(images[:2])) and ds.names == ["more-0", "more-1"]
    assert ds.labels is not None and ds.labels.dtype == torch.int64 and ds.labels.tolist() == [4, 0]
    np.savez(tmp_path / "nox.npz", inputs=images)
    with pytest.raises(DataFormatError, match=r"no array 'x' \(it holds: inputs\)"):
        load_inputs([str(tmp_path / "nox.npz")], digits)


def test_csv_round_trips_exactly_with_a_label_column_removed_from_the_features(
    digits: LoadedModel, tmp_path: Path
) -> None:
    values = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    rows = [f"{a!r},{int(k)},{b!r},{c!r}" for k, (a, b, c) in zip([1, 0, 2, 1], values.tolist(), strict=True)]
    (tmp_path / "t.csv").write_text("age,label,height,weight\n" + "\n".join(rows) + "\n")
    ds = load_inputs([str(tmp_path / "t.csv")], digits, label_column="label")
    assert torch.equal(ds.x, torch.from_numpy(values)) and ds.kind == "tabular"
    assert ds.columns == ["age", "height", "weight"] and ds.names == ["t-0", "t-1", "t-2", "t-3"]
    assert ds.labels is not None and ds.labels.tolist() == [1, 0, 2, 1]
    ds = load_inputs([str(tmp_path / "t.csv")], digits)
    assert ds.columns == ["age", "label", "height", "weight"] and ds.labels is None and ds.x.shape == (4, 4)
    with pytest.raises(InvalidParameterError, match=r"label_column='kind' is not a column.*age, label, height, weight"):
        load_inputs([str(tmp_path / "t.csv")], digits, label_column="kind")


def test_a_non_numeric_csv_cell_is_refused_naming_file_line_and_column(digits: LoadedModel, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,tall\n")
    with pytest.raises(DataFormatError, match=r"'.*bad\.csv', line 3, column 'b': 'tall' is not a finite number"):
        load_inputs([str(tmp_path / "bad.csv")], digits)


def test_limit_keeps_the_first_rows_across_entries(digits: LoadedModel, tmp_path: Path) -> None:
    x = np.arange(3 * 64, dtype=np.float32).reshape(3, 1, 8, 8) / 200
    np.savez(tmp_path / "a.npz", x=x, y=np.array([7, 8, 9]))
    ds = load_inputs([str(tmp_path / "a.npz"), "digits-test"], digits, limit=5)
    test_x, test_y = load_digits("test")
    assert torch.equal(ds.x, torch.cat([torch.from_numpy(x), test_x[:2]]))
    assert ds.labels is not None and ds.labels.tolist() == [7, 8, 9, *test_y[:2].tolist()]
    assert ds.names == ["a-0", "a-1", "a-2", "digits-test-0000", "digits-test-0001"]
    assert load_inputs([str(tmp_path / "a.npz"), "digits-test"], digits, limit=2).names == ["a-0", "a-1"]
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidParameterError, match=rf"limit must be a positive integer.*{bad!r}"):
            load_inputs([str(tmp_path / "a.npz")], digits, limit=bad)  # type: ignore[arg-type]


def test_mixing_kinds_shapes_or_labelled_and_unlabelled_names_both_sources(digits: LoadedModel, tmp_path: Path) -> None:
    np.save(tmp_path / "img.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    np.save(tmp_path / "tab.npy", np.zeros((2, 64), dtype=np.float32))
    np.save(tmp_path / "big.npy", np.zeros((2, 1, 9, 9), dtype=np.float32))
    img, tab, big = (str(tmp_path / f"{n}.npy") for n in ("img", "tab", "big"))
    with pytest.raises(InvalidInputError, match=rf"cannot mix image and tabular.*{img!r}.*{tab!r}"):
        load_inputs([img, tab], digits)
    with pytest.raises(InvalidInputError, match=rf"different shapes.*{img!r}.*\(1, 8, 8\).*{big!r}.*\(1, 9, 9\)"):
        load_inputs([img, big], digits)
    with pytest.raises(InvalidInputError, match=rf"'digits-test' has labels but input {img!r} has none"):
        load_inputs(["digits-test", img], digits)


def test_missing_inputs_are_refused_naming_them_and_the_builtin_datasets(digits: LoadedModel, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.png")
    with pytest.raises(
        DatasetNotFoundError, match=rf"{missing!r} is not a builtin dataset \(photos, digits-test, sentiment-test\)"
    ):
        load_inputs(["digits-test", missing], digits)
    with pytest.raises(InvalidParameterError, match=r"pass \['digits-test'\]"):
        load_inputs("digits-test", digits)


# --------------------------------------------------------------------------------------------------
# load_config
# --------------------------------------------------------------------------------------------------

ALLOWED = {"methods": list, "n-samples": int, "threshold": float, "out": str, "quick": bool, "options": dict}


def test_config_normalises_dashes_and_keeps_nested_option_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'methods = ["lime", "rise"]\nn-samples = 50\nthreshold = 1\nquick = true\n'
        "[options.lime]\nn_samples = 100\n[options.rise]\np_keep = 0.25\n"
    )
    config = load_config(path, allowed=ALLOWED)
    assert config == {
        "methods": ["lime", "rise"],
        "n_samples": 50,
        "threshold": 1.0,
        "quick": True,
        "options": {"lime": {"n_samples": 100}, "rise": {"p_keep": 0.25}},
    }
    assert isinstance(config["threshold"], float)


def test_config_unknown_keys_are_all_listed_with_the_allowed_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('methods = ["lime"]\nbatchsize = 4\nseed = 1\n')
    with pytest.raises(InvalidParameterError) as info:
        load_config(path, allowed=ALLOWED)
    msg = str(info.value)
    assert "unknown keys: 'batchsize', 'seed'" in msg
    assert "allowed keys: methods, n_samples, options, out, quick, threshold" in msg


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('n_samples = "50"', r"'n_samples' must be int; got str '50'"),
        ("n_samples = true", r"'n_samples' must be int; got bool True"),
        ("quick = 1", r"'quick' must be bool; got int 1"),
        ("[out]\nx = 1", r"'out' must be str; got a table \(tables are allowed only for: options\)"),
        ("options = 3", r"'options' must be a table \(dict\); got int 3"),
    ],
)
def test_config_values_of_the_wrong_type_name_key_value_and_type(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(InvalidParameterError, match=pattern):
        load_config(path, allowed=ALLOWED)


def test_config_syntax_errors_and_missing_files_name_the_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('methods = ["lime"]\nn_samples = \n')
    with pytest.raises(InvalidParameterError, match=r"c\.toml' is not valid TOML: .*line 2"):
        load_config(path, allowed=ALLOWED)
    with pytest.raises(InvalidParameterError, match=r"cannot read the config file '.*absent\.toml'"):
        load_config(tmp_path / "absent.toml", allowed=ALLOWED)
    path.write_text("n-samples = 1\nn_samples = 2\n")
    with pytest.raises(InvalidParameterError, match=r"sets 'n-samples' and 'n_samples', which are the same option"):
        load_config(path, allowed=ALLOWED)


def test_json_and_yaml_configs_read_as_the_toml_one(tmp_path: Path) -> None:
    """RELIABILITY.md: configs in TOML, JSON, or YAML through a safe loader; the same settings give the same config,
    and YAML that would build a Python object is refused, as is a file whose top level is not a mapping."""
    want = {"methods": ["lime"], "n_samples": 50, "threshold": 0.5, "options": {"lime": {"n_samples": 100}}}
    (tmp_path / "c.json").write_text('{"methods": ["lime"], "n-samples": 50, "threshold": 0.5, '
                                     '"options": {"lime": {"n_samples": 100}}}')  # fmt: skip
    (tmp_path / "c.yaml").write_text(
        "methods: [lime]\nn-samples: 50\nthreshold: 0.5\noptions:\n  lime:\n    n_samples: 100\n"
    )
    (tmp_path / "c.toml").write_text(
        'methods = ["lime"]\nn-samples = 50\nthreshold = 0.5\n[options.lime]\nn_samples = 100\n'
    )
    for name in ("c.json", "c.yaml", "c.toml"):
        assert load_config(tmp_path / name, allowed=ALLOWED) == want
    refused = [
        ("bad.yml", "methods: !!python/object/apply:os.system ['echo hi']\n", r"bad\.yml' is not plain YAML data"),
        ("bad.json", '{"methods": ["lime"],\n "quick": }', r"bad\.json' is not valid JSON: .*line 2"),
        ("list.json", '["lime"]', r"must hold a mapping of option names to values .* got list"),
        ("n.json", '{"n_samples": null}', r"'n_samples' must be int; got NoneType None"),
    ]
    for name, text, pattern in refused:
        (tmp_path / name).write_text(text)
        with pytest.raises(InvalidParameterError, match=pattern):
            load_config(tmp_path / name, allowed=ALLOWED)


# ---------------------------------------------------------------------------------------------- devices
def test_resolve_device_reads_every_documented_form_and_refuses_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    from whybox.runs.loaders import resolve_device

    assert resolve_device(None) == resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu", "cuda:x", "meta", "", 0, 1.5):
        with pytest.raises(InvalidParameterError, match=r"device must be 'cpu', 'auto' .*; got "):
            resolve_device(bad)  # type: ignore[arg-type]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InvalidParameterError, match=r"device 'cuda:0': torch sees no CUDA device on this machine"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InvalidParameterError, match=r"has 2 CUDA device\(s\), numbered from 0; pass cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InvalidParameterError, match="torch sees no MPS"):
        resolve_device("mps")


def test_load_model_on_the_cpu_device_is_the_default_model() -> None:
    a = load_model("digits-cnn", device="cpu").module
    b = load_model("digits-cnn").module
    assert all(p.device.type == "cpu" for p in a.parameters()) and not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_the_python_310_toml_fallback_is_a_declared_dependency() -> None:
    """loaders imports tomli where tomllib is missing (Python 3.10, which pyproject admits): pyproject must install
    it there, and only there."""
    from whybox.runs.loaders import tomllib  # tomllib or, on Python 3.10, tomli

    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.10"
    deps = [d.replace(" ", "") for d in meta["dependencies"]]
    assert any(d.startswith("tomli>=") and d.endswith(";python_version<'3.11'") for d in deps), deps
    src = (Path(__file__).resolve().parents[2] / "src/whybox/runs/loaders.py").read_text()
    assert "import tomli as tomllib" in src


def test_a_csv_for_an_estimator_fitted_on_a_dataframe_is_read_by_column_name(tmp_path: Path) -> None:
    """The header names the columns: a table in another order reaches the model in the order it was fitted on
    (the same rows as the fitted order give the same x); missing or unexpected columns are refused, named."""
    (tmp_path / "sk.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import pandas as pd
            from sklearn.linear_model import LogisticRegression

            def fitted():
                rng = np.random.default_rng(0)
                x = pd.DataFrame(rng.normal(size=(40, 3)), columns=["age", "height", "weight"])
                return LogisticRegression().fit(x, (x["age"] > 0).astype(int))
            """
        )
    )
    model = load_model(f"{tmp_path}/sk.py:fitted")
    rows = [[0.5, 1.5, -2.0], [-1.0, 0.25, 3.0]]  # age, height, weight
    (tmp_path / "fitted.csv").write_text("age,height,weight\n" + "\n".join(",".join(map(str, r)) for r in rows))
    (tmp_path / "shuffled.csv").write_text("weight,age,height\n" + "\n".join(f"{w},{a},{h}" for a, h, w in rows))
    a = load_inputs([str(tmp_path / "fitted.csv")], model)
    b = load_inputs([str(tmp_path / "shuffled.csv")], model)
    assert a.columns == b.columns == ["age", "height", "weight"]
    assert torch.equal(a.x, b.x) and torch.equal(a.x, torch.tensor(rows, dtype=torch.float32))
    (tmp_path / "other.csv").write_text("age,height,shoe\n1,2,3\n")
    with pytest.raises(
        InvalidInputError,
        match=r"the CSV header does not match the columns the model was fitted on: missing weight, unexpected shoe; ",
    ):
        load_inputs([str(tmp_path / "other.csv")], model)


def test_an_estimator_s_labels_in_npz_and_csv_are_its_class_values(tmp_path: Path) -> None:
    """'y' of an .npz and a CSV's label column hold an estimator's classes as it names them (classes_ [1, 2, 5] or
    ['no', 'yes']), read as its output indices; a value that is not a class is named."""
    (tmp_path / "est.py").write_text(
        "import numpy as np\nfrom sklearn.linear_model import LogisticRegression\n\n"
        "X = np.arange(12.0).reshape(6, 2)\n\n"
        "def odd():\n    return LogisticRegression().fit(X, [1, 2, 5, 1, 2, 5])\n\n"
        "def words():\n    return LogisticRegression().fit(X, ['no', 'yes'] * 3)\n"
    )
    odd, words = load_model(f"{tmp_path}/est.py:odd"), load_model(f"{tmp_path}/est.py:words")
    x = np.arange(6.0).reshape(3, 2)
    np.savez(tmp_path / "o.npz", x=x, y=np.array([5, 1, 2]))
    np.savez(tmp_path / "w.npz", x=x, y=np.array(["yes", "no", "yes"]))
    assert load_inputs([str(tmp_path / "o.npz")], odd).labels.tolist() == [2, 0, 1]
    assert load_inputs([str(tmp_path / "w.npz")], words).labels.tolist() == [1, 0, 1]
    (tmp_path / "w.csv").write_text("a,y,b\n0,yes,1\n2, no ,3\n")
    assert load_inputs([str(tmp_path / "w.csv")], words, label_column="y").labels.tolist() == [1, 0]
    (tmp_path / "i.csv").write_text("a,y,b\n0,1,1\n2,0,3\n")  # classes of text: an integer label is an index
    assert load_inputs([str(tmp_path / "i.csv")], words, label_column="y").labels.tolist() == [1, 0]
    (tmp_path / "o.csv").write_text("a,y,b\n0,5.0,1\n2,3,3\n")
    with pytest.raises(DataFormatError) as err:
        load_inputs([str(tmp_path / "o.csv")], odd, label_column="y")
    assert str(err.value) == (
        f"input {str(tmp_path / 'o.csv')!r}, line 3, column 'y' (the label column): labels: '3' is not one of the "
        "model's classes [1, 2, 5] (its classes_); give each row's true class as the estimator names it."
    )
