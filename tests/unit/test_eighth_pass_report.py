"""Eighth-pass audit: what the debug table and the run report print is what was computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import whybox
from whybox.runs.job import Job, run_job
from whybox.runs.report_data import load_run_report


def test_the_debug_table_names_the_culprit_with_the_largest_drop_and_counts_the_culprits() -> None:
    """The table's last columns are the number of culprits and the largest drop with its region: the region id
    printed is ``culprits[0]``, not the count (it printed ``3 (-0.084)`` for culprits [2, 3, 1])."""
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.5, 0.4], [0.3, -0.6]], dtype=torch.float64)

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float64) @ w

    x = torch.tensor([[0.2, 0.1, 0.0, 1.5], [0.1, 0.3, 1.2, 0.0]], dtype=torch.float64)
    report = whybox.find_mistakes(model, x, [1, 0], method="exact_shapley", fill=0.0)
    assert [m.culprits[0] for m in report.mistakes] == [3, 2]  # row 0: 2 culprits, the worst region 3
    with_culprits = [m for m in report.mistakes if len(m.culprits) > 0]
    assert with_culprits, "the set-up needs a mistake with culprits"
    lines = report.table().splitlines()
    assert lines[0].endswith("reached at  culprits  largest drop")
    for m in report.mistakes:
        row = next(line for line in lines[1:] if line.split()[0] == str(m.index))
        if m.culprits:
            assert row.endswith(f"{len(m.culprits):>8}  {m.drops[0]:+.3f} (region {m.culprits[0]})")
        else:
            assert row.endswith(f"{0:>8}  -")


def test_the_run_reports_cost_per_sample_leaves_out_samples_the_model_failed_on(tmp_path: Path) -> None:
    """A sample the model raises on gets no prediction and costs the methods nothing: the cost per sample is over
    the samples the method ran on (feature_ablation on 4 columns: 5 passes each, not 5 x 8 / 9)."""
    w = np.random.default_rng(0).normal(size=(4, 3))

    def model(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if (np.abs(x[:, 0] - 6.5) < 1e-9).any():
            raise ValueError("this model fails on 6.5")
        return x @ w

    x = np.random.default_rng(1).normal(size=(9, 4))
    x[4, 0] = 6.5
    run_job(Job(methods=("feature_ablation",), shard_size=3), model, torch.from_numpy(x), tmp_path / "run")
    (method,) = load_run_report(tmp_path / "run").methods
    assert (method.n_done, method.n_failed) == (8, 1)
    assert method.n_forward_per_sample == 5.0


def test_evaluate_refuses_an_unknown_metric_option_before_it_explains_or_prints_a_metric(tmp_path: Path) -> None:
    """``--metrics deletion,road --metric-option road.percentages=...`` printed the explanation's and deletion's
    lines and then failed on road's option: the keys are checked first, as compare checks them (exit 2, one Error
    line, a did-you-mean, nothing printed before it)."""
    from click.testing import CliRunner

    from whybox.cli.main import main as cli

    (tmp_path / "model.py").write_text(
        "import numpy as np\n"
        "CALLS = []\n"
        "def build():\n"
        "    def f(x):\n"
        "        CALLS.append(len(x))\n"
        "        return np.asarray(x) @ np.arange(6.0).reshape(3, 2)\n"
        "    return f\n"
    )
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(4, 3)))
    args = ["evaluate", "--model", f"{tmp_path / 'model.py'}:build", str(tmp_path / "x.npy"), "--method"]
    res = CliRunner().invoke(
        cli, [*args, "feature_ablation", "--metrics", "deletion,road", "--metric-option", "road.fraction=0.5"]
    )
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        "Error: --metric-option road: unknown option(s) 'fraction'. Did you mean 'fractions'? 'road' takes: abs, "
        "batch_size, fractions, mode, noise, orders, quantity, score, seed."
    ]
