"""Figures and static HTML reports. numpy and matplotlib are used here (and in the CLI) only."""

from whybox.report.figures import save_grid_figure, save_stability_figure, save_titled_png
from whybox.report.html import CSP, render_demo_index, write_text_atomic
from whybox.report.overlay import overlay, save_png, to_heatmap
from whybox.report.paths import output_path, safe_component
from whybox.report.run_report import (
    RUN_REPORT_CSP,
    ReportMethod,
    ReportMetric,
    ReportSample,
    ReportVerdict,
    RunReport,
    render_run_report,
    write_run_report,
)
from whybox.report.tokens import TOKENS_CSP, render_tokens_html, render_tokens_page, render_tokens_terminal

__all__ = [
    "CSP",
    "RUN_REPORT_CSP",
    "TOKENS_CSP",
    "ReportMethod",
    "ReportMetric",
    "ReportSample",
    "ReportVerdict",
    "RunReport",
    "output_path",
    "overlay",
    "render_demo_index",
    "render_run_report",
    "render_tokens_html",
    "render_tokens_page",
    "render_tokens_terminal",
    "safe_component",
    "save_grid_figure",
    "save_png",
    "save_stability_figure",
    "save_titled_png",
    "to_heatmap",
    "write_run_report",
    "write_text_atomic",
]
