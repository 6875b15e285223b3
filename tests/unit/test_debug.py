"""Debugging wrong predictions: ``whybox.find_mistakes`` on a model built so that the culprit is known, and the
``whybox debug`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import whybox
from whybox.cli.main import main as cli
from whybox.errors import InvalidInputError, InvalidParameterError, UnknownNameError

F64 = torch.float64


class Trap(nn.Module):
    """Logits (x0 + x1 - 3 x2, 0): class 0 is right for every row here; a large x2 (the trap) flips it to 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, 0] + x[:, 1] - 3.0 * x[:, 2]
        return torch.stack([z, torch.zeros_like(z)], 1)


def rows() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(
        [[1.0, 1.0, 0.1, 0.3], [1.0, 0.5, 1.0, -0.2], [2.0, 0.5, 0.0, 0.0], [0.5, 0.5, 0.8, 1.0]], dtype=F64
    )
    return x, torch.zeros(4, dtype=torch.int64)


@pytest.mark.parametrize("method", ["lima", "occlusion", "exact_shapley"])
def test_the_trap_feature_is_the_culprit(method: str) -> None:
    """Rows 1 and 3 are wrong (x2 outweighs x0 + x1); the true class peaks with x0 and x1 shown and x2 hidden, at
    sigmoid(x0 + x1); adding x2 then drops it: x2 is the one culprit. x3 is never read: never a culprit."""
    x, y = rows()
    report = whybox.find_mistakes(Trap(), x, y, method=method)
    assert report.n_inputs == 4 and report.n_wrong == 2 and report.accuracy == 0.5
    assert [m.index for m in report.mistakes] == [1, 3]
    assert report.explanation is not None
    for k, m in enumerate(report.mistakes):
        assert torch.equal(m.attribution, report.explanation.attributions[k])  # the true-class row, as explained
        xi = x[m.index]
        assert (m.label, m.predicted) == (0, 1)
        assert m.culprits == [2]
        assert m.drops[0] < -0.01
        assert m.culprit_mask.tolist() == [False, False, True, False]
        best = float(torch.sigmoid(xi[0] + xi[1]))
        assert m.hc[-1] == pytest.approx(best, rel=1e-9)  # reached with 2 (or 3, x3 being inert) of 4 columns
        assert m.hc_area[-1] in (0.5, 0.75)
        assert m.p_label == pytest.approx(float(torch.sigmoid(xi[0] + xi[1] - 3 * xi[2])), rel=1e-6)


def test_regions_for_every_input_are_cut_to_the_mistakes() -> None:
    """regions= of one map per input ((N, F) here, (N, H, W) for images) reached the explainer uncut beside the
    mistakes' rows and was refused; (1, F) ended in a raw reshape error. Both are read as the shared map's
    report; a map count that fits neither is named."""
    x, y = rows()
    shared = torch.tensor([0, 0, 1, 2])
    want = whybox.find_mistakes(Trap(), x, y, regions=shared)
    for given in (shared.expand(4, -1), shared[None]):
        got = whybox.find_mistakes(Trap(), x, y, regions=given)
        assert [(m.index, m.culprits, m.hc) for m in got.mistakes] == [
            (m.index, m.culprits, m.hc) for m in want.mistakes
        ]
    with pytest.raises(InvalidParameterError, match=r"^regions of shape \(3, 4\) hold 3 label maps for 4 inputs"):
        whybox.find_mistakes(Trap(), x, y, regions=shared.expand(3, -1))


def test_limit_and_no_mistakes() -> None:
    x, y = rows()
    one = whybox.find_mistakes(Trap(), x, y, max_mistakes=1)
    assert one.n_wrong == 2 and [m.index for m in one.mistakes] == [1]
    assert one.explanation is not None and one.explanation.attributions.shape == (1, 4)
    right = whybox.find_mistakes(Trap(), x[[0, 2]], y[:2])
    assert right.mistakes == [] and right.accuracy == 1.0 and right.explanation is None


def test_rows_as_a_frame_and_a_classifier_s_own_labels() -> None:
    """A tabular user holds a DataFrame and the labels the estimator was fitted on: the report is the one from the
    tensor and the class indices, and an unknown label lists the classes."""
    pd = pytest.importorskip("pandas")
    from sklearn.linear_model import LogisticRegression

    x = torch.tensor([[0.0, 0.1], [0.2, 0.0], [1.0, 0.9], [0.9, 1.1], [0.1, 0.0], [1.0, 1.0]], dtype=F64)
    names = ["no", "no", "yes", "yes", "yes", "no"]  # the last two are the mistakes
    clf = LogisticRegression().fit(x.numpy()[:4], names[:4])
    frame = pd.DataFrame(x.numpy(), columns=["a", "b"])
    by_name = whybox.find_mistakes(clf, frame, pd.Series(names), method="exact_shapley")
    by_index = whybox.find_mistakes(clf, x, torch.tensor([0, 0, 1, 1, 1, 0]), method="exact_shapley")
    assert by_name.n_wrong == by_index.n_wrong == 2
    assert [(m.index, m.label, m.attribution.tolist()) for m in by_name.mistakes] == [
        (m.index, m.label, m.attribution.tolist()) for m in by_index.mistakes
    ]
    proba = clf.predict_proba(x.numpy())
    for m in by_name.mistakes:  # its own probabilities, not a softmax of them
        assert m.p_label == pytest.approx(proba[m.index, m.label], rel=1e-12)
        assert m.p_predicted == pytest.approx(proba[m.index, m.predicted], rel=1e-12)
    with pytest.raises(
        whybox.InvalidInputError, match=r"^labels: 'maybe' is not one of the model's classes \['no', 'yes'\] "
    ):
        whybox.find_mistakes(clf, frame, [*names[:5], "maybe"])


ESTIMATOR_PY = """
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def shifted():  # classes_ [1, 2, 3]
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=1000).fit(x, y + 1)


def worded():  # classes_ ['no', 'yes']
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=1000).fit(x, np.where(y == 2, "yes", "no"))
"""


def test_an_estimator_s_integer_classes_are_its_labels_not_output_indices(tmp_path: Path) -> None:
    """Labels are the values of classes_ ([1, 2, 3], [-1, 1]), as scikit-learn reads them: a model right on every row
    read 0 % (each label shifted one class) or was refused ('labels must lie in [0, 2]'); the same through the
    command line's --label-column, whose text labels ('yes') were refused as 'not a finite number'."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    rows = x[40:110:7]
    for shift, scale in ((1, 1), (0, 2)):  # classes [1, 2, 3]; [0, 2, 4]
        yy = y * scale + shift
        clf = LogisticRegression(max_iter=1000).fit(x, yy)
        truth = yy[40:110:7]
        report = whybox.find_mistakes(clf, rows, truth, fill=x.mean(0), method="exact_shapley")
        assert report.n_wrong == int((clf.predict(rows) != truth).sum())
        assert [m.label for m in report.mistakes] == [list(clf.classes_).index(truth[m.index]) for m in report.mistakes]
    path = tmp_path / "est.py"
    path.write_text(ESTIMATOR_PY)
    for factory, labels in (("shifted", y + 1), ("worded", np.where(y == 2, "yes", "no"))):
        csv = tmp_path / f"{factory}.csv"
        lines = ["a,b,c,d,y"] + [
            ",".join(f"{v:g}" for v in r) + f",{t}" for r, t in zip(rows, labels[40:110:7], strict=True)
        ]
        csv.write_text("\n".join(lines) + "\n")
        clf = _module(path).__dict__[factory]()
        wrong = int((clf.predict(rows) != labels[40:110:7]).sum())
        code, out = _debug("--model", f"{path}:{factory}", str(csv), "--label-column", "y", "--method",
                           "exact_shapley", "--option", "fill=[5.8, 3.0, 3.8, 1.2]", "--out", str(tmp_path / factory))  # fmt: skip
        assert code == 0, out
        assert f"inputs: 10; accuracy {100 * (10 - wrong) / 10:.1f}%; mistakes: {wrong}" in out
    csv.write_text("a,b,c,d,y\n5,3,1,0.2,maybe\n")
    code, out = _debug("--model", f"{path}:worded", str(csv), "--label-column", "y", "--out", str(tmp_path / "x"))
    assert (
        code == 2
        and ("line 2, column 'y' (the label column): labels: 'maybe' is not one of the model's classes ['no', 'yes']")
        in out
    )


def test_text_columns_a_regressor_and_the_report_s_repr() -> None:
    """A frame with a text column (coded for the pipeline) finds the same mistakes as its one-hot codes do, with a
    reference row as the fill (a fill by name is refused); a regressor is refused by name; the report prints one
    line, where the dataclass repr printed every tensor of every mistake."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"a": [0.0, 0.2, 1.0, 0.9, 0.1, 1.0], "c": ["x", "x", "y", "y", "y", "x"]})
    y = [0, 0, 1, 1, 0, 1]  # rows 4 and 5 contradict their text column
    pipe = make_pipeline(
        ColumnTransformer([("oh", OneHotEncoder(), ["c"])], remainder="passthrough"), LogisticRegression(C=100.0)
    ).fit(frame.iloc[:4], y[:4])
    ref = pd.Series({"a": 0.5, "c": "x"})
    report = whybox.find_mistakes(pipe, frame, y, method="exact_shapley", fill=ref)
    wrong = [i for i, (p, t) in enumerate(zip(pipe.predict(frame), y, strict=True)) if p != t]
    assert [m.index for m in report.mistakes] == wrong and wrong
    for m in report.mistakes:  # exact Shapley values of the true class against the reference row, on DataFrames
        row = frame.iloc[m.index]

        def v(cols: set[str], row: object = row, label: int = m.label) -> float:
            r = pd.DataFrame([{c: (row[c] if c in cols else ref[c]) for c in ["a", "c"]}])
            return float(pipe.predict_proba(r)[0, label])

        phi_a = 0.5 * (v({"a"}) - v(set())) + 0.5 * (v({"a", "c"}) - v({"c"}))
        assert m.attribution[0].item() == pytest.approx(phi_a, abs=1e-10)
    assert repr(report) == (
        f"DebugReport(6 inputs, {len(wrong)} wrong (accuracy {1 - len(wrong) / 6:.3f}), method 'exact_shapley'; "
        ".table() lists the mistakes, .mistakes holds them)"
    )
    with pytest.raises(InvalidParameterError, match=r"inputs have text or categorical columns \('c'\), which fill="):
        whybox.find_mistakes(pipe, frame, y, method="exact_shapley")
    reg = RandomForestRegressor(n_estimators=3, random_state=0).fit(frame[["a"]], y)
    with pytest.raises(InvalidParameterError, match=r"RandomForestRegressor is a regressor \(its outputs are"):
        whybox.find_mistakes(reg, frame[["a"]], y)


def test_bad_input_names_the_parameter() -> None:
    x, y = rows()
    with pytest.raises(InvalidInputError, match=r"labels must be integer classes of shape \(4,\)"):
        whybox.find_mistakes(Trap(), x, y[:3])
    with pytest.raises(InvalidInputError, match=r"labels must lie in \[0, 1\]"):
        whybox.find_mistakes(Trap(), x, y + 2)
    with pytest.raises(InvalidParameterError, match="max_mistakes must be a positive int"):
        whybox.find_mistakes(Trap(), x, y, max_mistakes=0)
    with pytest.raises(UnknownNameError, match="lime"):
        whybox.find_mistakes(Trap(), x, y, method="limee")
    with pytest.raises(InvalidParameterError, match=r"regions must be a label map tensor .* got 'columns' \(a region"):
        whybox.find_mistakes(Trap(), x, y, method="occlusion", regions="columns")
    with pytest.raises(InvalidParameterError, match=r"regions must be a label map tensor .* got \[0, 0, 1, 1\]\.$"):
        whybox.find_mistakes(Trap(), x, y, regions=[0, 0, 1, 1])


def test_lima_region_kind_by_name_is_lima_s_regions() -> None:
    """regions="columns" with LIMA: LIMA builds its regions, and the report equals passing them as a tensor."""
    x, y = rows()
    by_name = whybox.find_mistakes(Trap(), x, y, regions="columns")
    by_map = whybox.find_mistakes(Trap(), x, y, regions=torch.arange(4))
    assert [m.culprits for m in by_name.mistakes] == [m.culprits for m in by_map.mistakes] == [[2], [2]]
    assert [m.hc for m in by_name.mistakes] == [m.hc for m in by_map.mistakes]


def test_debug_command_writes_one_figure_per_mistake(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["debug", "--limit", "2", "--out", str(tmp_path / "dbg")])
    assert res.exit_code == 0, res.output
    assert "mistakes:" in res.output and "HC<=25%" in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip() and ln.split()[0].isdigit()]
    assert len(lines) == 2
    pngs = sorted((tmp_path / "dbg").glob("mistake_*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--regions", "10"], "--regions must be a square number"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--limit", "0"], "--limit"),
        (["--device", "cuda:x"], "device must be 'cpu', 'auto'"),
    ],
)
def test_debug_command_bad_flags(args: list[str], match: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["debug", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert match in res.output


def test_model_in_train_mode_is_read_in_eval_and_left_as_it_came() -> None:
    """Predictions come through the adapter's guard: a dropout that would scramble them in train mode is off, and
    the model is handed back in train mode with its parameters' flags untouched."""
    x, y = rows()
    model = nn.Sequential(nn.Dropout(p=0.9), Trap()).train()
    flags = [p.requires_grad for p in model.parameters()]
    report = whybox.find_mistakes(model, x, y)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert [m.index for m in report.mistakes] == [1, 3]  # the eval-mode answer, every time
    assert [m.culprits for m in report.mistakes] == [[2], [2]]


def _trap_words(texts: list[str]) -> torch.Tensor:
    """Logits (#good + #fine - 3 #bad, 0): a text with 'bad' in it goes to class 1 unless good words outweigh it."""
    z = torch.tensor([t.split().count("good") + t.split().count("fine") - 3.0 * t.split().count("bad") for t in texts])
    return torch.stack([z, torch.zeros_like(z)], 1).to(F64)


@pytest.mark.parametrize("method", ["lima", "occlusion", "exact_shapley"])
def test_a_text_s_culprits_are_its_trap_words(method: str) -> None:
    """Texts go in as they are: every text is class 0; a 'bad' outweighing the good words makes it a mistake, and
    each 'bad' is a culprit word (the best subset shows the good words alone)."""
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    ad = BlackBoxTextAdapter(_trap_words, labels=["ok", "trap"])
    texts = ["good fine film", "good fine bad film", "bad plot bad good"]
    report = whybox.find_mistakes(ad, texts, ["ok", "ok", "ok"], method=method)
    assert [m.index for m in report.mistakes] == [1, 2]
    assert [m.culprit_words for m in report.mistakes] == [["bad"], ["bad", "bad"]]
    assert [sorted(m.culprits) for m in report.mistakes] == [[2], [0, 2]]  # word positions, largest drop first
    assert report.class_names == ["ok", "trap"]  # the table names the classes by default
    assert [line.split()[1:3] for line in report.table().splitlines()[1:]] == [["ok", "trap"], ["ok", "trap"]]


def test_a_hf_text_s_culprits_are_the_words_whose_insertion_lowers_the_true_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a text adapter the steps insert words (the [MASK] fill, CLS/SEP/pads kept) in the order the curve used
    (meta region_order, ties broken by its seeded rule): each culprit is the word whose insertion there lowers the
    true class by the reported drop, and culprit_words names it."""
    pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    from test_text import SENTENCES, tiny_bert, toy_tokenizer

    from whybox.models.text import adapt_text

    clf = adapt_text(tiny_bert(), toy_tokenizer())
    batch = clf.encode(SENTENCES)
    with torch.no_grad():
        wrong_labels = (1 - clf.scores(batch.inputs).argmax(1)).clamp(0, 2)
    monkeypatch.setattr("whybox.debug.CULPRIT_DROP", 0.0)  # the random tiny model's drops are small: count them all
    report = whybox.find_mistakes(clf, SENTENCES, wrong_labels, method="occlusion")
    assert report.n_wrong == len(SENTENCES)
    fill, ids, spans = batch.fill("mask"), batch.word_features()[..., 0], batch.word_spans()
    found = 0
    for m in report.mistakes:
        r = m.index
        words = [w for w, _ in spans[r]]
        assert m.culprit_words == [words[c] for c in m.culprits]
        assert torch.equal(m.regions, ids[r])
        # replay the insertion: words in the curve's order into the filled row, the true class's probability
        cur, ys = fill[r : r + 1].clone(), []
        hc = whybox.evaluate(
            clf, batch.inputs[r : r + 1], report.explanation[report.mistakes.index(m)], "highest_confidence",
            target=m.label, regions=ids[r : r + 1, :, None], fill=fill[r : r + 1],
        )  # fmt: skip
        order = hc.meta["region_order"][0].tolist()
        with torch.no_grad():
            ys.append(float(clf.scores(cur).softmax(1)[0, m.label]))
            for c in order[: len(words)]:
                cur[0, ids[r] == c] = batch.inputs[r, ids[r] == c]
                ys.append(float(clf.scores(cur).softmax(1)[0, m.label]))
        for c, d in zip(m.culprits, m.drops, strict=True):
            j = order.index(c)
            assert ys[j + 1] - ys[j] == pytest.approx(d, abs=1e-9)
            found += 1
    assert found > 0


# ---------------------------------------------------------------------------------------------- the command on any model
MODELS = '''
import torch
from torch import nn
from whybox.models.blackbox_text import BlackBoxTextAdapter


class Trap(nn.Module):
    def forward(self, x):
        z = x[:, 0] + x[:, 1] - 3.0 * x[:, 2]
        return torch.stack([z, torch.zeros_like(z)], 1)


class ImageTrap(nn.Module):
    """Class 0 reads the top-left 4 x 4 cell of a 12 x 12 image; the bottom-right cell (the trap) pulls it to 1."""

    def forward(self, x):
        z = x[:, 0, :4, :4].sum((1, 2)) - 0.5 * x[:, 0, 8:, 8:].sum((1, 2))
        return torch.stack([z, torch.zeros_like(z)], 1)


def trap():
    return Trap()


def image_trap():
    return ImageTrap()


def words(texts):
    z = torch.tensor([t.count("good") + t.count("great") - 2.0 * t.count("not") for t in texts], dtype=torch.float64)
    return torch.stack([-z, z], 1)


def text_trap():
    return BlackBoxTextAdapter(words, labels=["negative", "positive"])
'''


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS, encoding="utf-8")
    return path


def _debug(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["debug", *args])
    return res.exit_code, res.output


def _module(path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"debug_models_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(out: Path) -> list[dict]:
    import json

    return json.loads((out / "mistakes.json").read_text(encoding="utf-8"))


def test_debug_command_on_a_table_names_the_culprit_columns(model_file: Path, tmp_path: Path) -> None:
    """`whybox debug` was the digits CNN's alone; on a CSV with --label-column it finds the same mistakes as
    find_mistakes and names the trap column as the culprit."""
    x, y = rows()
    csv = tmp_path / "rows.csv"
    lines = ["a,b,trap,unused,y"] + [
        ",".join(f"{v:g}" for v in r) + f",{int(t)}" for r, t in zip(x.tolist(), y, strict=True)
    ]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out = _debug("--model", f"{model_file}:trap", str(csv), "--label-column", "y", "--out", str(tmp_path / "d"))
    assert code == 0, out
    api = whybox.find_mistakes(Trap(), x.float(), y)
    got = _records(tmp_path / "d")
    assert [r["index"] for r in got] == [m.index for m in api.mistakes] == [1, 3]
    assert [r["culprit_columns"] for r in got] == [["trap"], ["trap"]]
    assert [r["hc"] for r in got] == [m.hc for m in api.mistakes]
    assert "rows-1: culprit columns: trap" in out and "accuracy 50.0%" in out
    # LIMA's groups= makes a region of several columns: the culprit's columns are its group's (the id was read as a
    # column index: group 1 named 'b')
    code, out = _debug("--model", f"{model_file}:trap", str(csv), "--label-column", "y", "--out", str(tmp_path / "g"),
                       "--option", "groups=[0,0,1,2]")  # fmt: skip
    assert code == 0, out
    assert [r["culprit_columns"] for r in _records(tmp_path / "g")] == [["trap"], ["trap"]]
    code, out = _debug("--model", f"{model_file}:trap", str(csv), "--label-column", "y", "--out", str(tmp_path / "h"),
                       "--option", "groups=[1,0,0,1]")  # fmt: skip
    assert code == 0, out
    assert [r["culprit_columns"] for r in _records(tmp_path / "h")] == [["b", "trap"], ["b", "trap"]]


def test_debug_command_on_other_images_puts_its_grid_over_their_size(model_file: Path, tmp_path: Path) -> None:
    """12 x 12 images from an .npz with 'y': --regions 9 is a 3 x 3 grid of 4 x 4 cells; the mistakes, their
    culprit (the trap cell, 8) and their curves are find_mistakes' with that grid, and each gets a figure."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 12, 12, generator=g)
    x[::2, 0, 8:, 8:] += 1.0  # the trap on rows 0, 2, 4
    y = torch.zeros(6, dtype=torch.int64)
    np.savez(tmp_path / "imgs.npz", x=x.numpy(), y=y.numpy())
    code, out = _debug(
        "--model", f"{model_file}:image_trap", str(tmp_path / "imgs.npz"), "--regions", "9", "--out", str(tmp_path / "d")
    )  # fmt: skip
    assert code == 0, out
    cells = torch.arange(12) // 4
    grid = cells.view(-1, 1) * 3 + cells.view(1, -1)
    models = _module(model_file)
    api = whybox.find_mistakes(models.ImageTrap(), x, y, regions=grid)
    got = _records(tmp_path / "d")
    assert [r["index"] for r in got] == [m.index for m in api.mistakes] == [0, 2, 4]
    assert [r["culprits"] for r in got] == [m.culprits for m in api.mistakes] == [[8]] * 3
    assert [r["hc"] for r in got] == [m.hc for m in api.mistakes]
    for r in got:
        assert (tmp_path / "d" / r["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out = _debug("--model", f"{model_file}:image_trap", str(tmp_path / "imgs.npz"), "--regions", "169")
    assert code == 2 and "--regions must be a square number of grid cells up to 144 on these 12 x 12 images" in out


def test_debug_command_on_texts_names_the_culprit_words(model_file: Path, tmp_path: Path) -> None:
    """A text model file on the labelled sentiment-test set: the command's culprit words are find_mistakes'."""
    from whybox.data.text import sentiment_data

    code, out = _debug("--model", f"{model_file}:text_trap", "sentiment-test", "--limit", "3", "--out", str(tmp_path))
    assert code == 0, out
    texts, labels = sentiment_data("test")
    models = _module(model_file)
    api = whybox.find_mistakes(models.text_trap(), texts, labels, max_mistakes=3)
    got = _records(tmp_path)
    assert [r["culprit_words"] for r in got] == [m.culprit_words for m in api.mistakes]
    assert [r["label"] for r in got] == [["negative", "positive"][m.label] for m in api.mistakes]
    assert any(r["culprit_words"] for r in got)


def test_debug_command_refuses_unlabelled_inputs_a_grid_off_images_and_another_kind_s_method(
    model_file: Path, tmp_path: Path
) -> None:
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 1, 12, 12), dtype=np.float32))
    code, out = _debug("--model", f"{model_file}:image_trap", str(tmp_path / "x.npy"), "--out", str(tmp_path / "d"))
    assert code == 2 and "debug needs each input's true class" in out
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b,trap,y\n1,1,2,0\n", encoding="utf-8")
    args = ("--model", f"{model_file}:trap", str(csv), "--label-column", "y", "--out", str(tmp_path / "d"))
    code, out = _debug(*args, "--regions", "4")
    assert code == 2 and "--regions sets a grid on images; these are tabular inputs" in out
    code, out = _debug(*args, "--method", "gradcam")
    assert code == 2 and "'gradcam' does not explain tabular inputs" in out
