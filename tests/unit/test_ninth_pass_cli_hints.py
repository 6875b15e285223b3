"""A CSV that holds one column more than the estimator's is likely its labels: the refusal names --label-column; the
debug table names a table's culprit by its column(s), as the culprit-columns line below it does."""

from __future__ import annotations

import torch

from whybox.debug import DebugReport, Mistake
from whybox.runs.loaders import _header_mismatch


def test_one_column_more_than_the_model_s_is_offered_as_the_label_column() -> None:
    msg = _header_mismatch([], ["y"])
    assert msg.endswith(
        "or, if 'y' holds the true labels, say so with --label-column y (label_column in a config file)."
    )
    assert "missing (none), unexpected y" in msg


def test_other_header_mismatches_get_no_label_column_hint() -> None:
    for missing, extra in (([], ["y", "z"]), (["age"], ["y"]), (["age"], [])):
        msg = _header_mismatch(missing, extra)
        assert "--label-column" not in msg
        assert msg.endswith("(feature_names_in_).")


def _mistake(regions: torch.Tensor, culprits: list[int]) -> Mistake:
    return Mistake(
        index=0, label=1, predicted=0, p_label=0.4, p_predicted=0.6, hc=[0.7] * 4, hc_area=[0.25] * 4,
        insertion=0.5, culprits=culprits, drops=[-0.2] * len(culprits), culprit_mask=torch.zeros(regions.shape,
        dtype=torch.bool), regions=regions, attribution=torch.zeros(regions.shape),
    )  # fmt: skip


def test_the_debug_table_names_a_table_s_culprit_by_its_columns() -> None:
    # region 1 is the group of columns b and d; region 2 is column c
    report = DebugReport(n_inputs=3, n_wrong=1, mistakes=[_mistake(torch.tensor([0, 1, 2, 1]), [1, 2])], method="x")
    assert report.table().endswith("-0.200 (region 1)")
    assert report.table(column_names=["a", "b", "c", "d"]).endswith("-0.200 (b, d)")


def test_column_names_leave_image_culprits_by_region() -> None:
    report = DebugReport(n_inputs=3, n_wrong=1, mistakes=[_mistake(torch.tensor([[0, 1], [2, 1]]), [2])], method="x")
    assert report.table(column_names=["a", "b", "c", "d"]).endswith("-0.200 (region 2)")
