"""Results tables and plots, in one place for every command that writes them: the runs under a
directory grouped over seeds (`runs`, `report`: lnrl-report) and the main job's comparison
(`results`: lnrl.apps.pipeline). Per-question records: `records`; metrics with 95% intervals and
paired differences to a baseline: `compare` (on lnrl.stats). Formatting lives in `tables`,
drawing in `plots`."""

from lnrl.reporting.compare import Comparison, MetricDiff, MetricValue, compare
from lnrl.reporting.records import load_records
from lnrl.reporting.report import report
from lnrl.reporting.results import METRICS, collect_results, run_sizes, write_results
from lnrl.reporting.runs import DEFAULT_METRICS, SETTING_FIELDS, load_run, load_runs, mean_std, summarize
from lnrl.reporting.tables import markdown_table, results_markdown, results_table

__all__ = ["DEFAULT_METRICS", "METRICS", "SETTING_FIELDS", "Comparison", "MetricDiff", "MetricValue",
           "collect_results", "compare", "load_records", "load_run", "load_runs", "markdown_table", "mean_std",
           "report", "results_markdown", "results_table", "run_sizes", "summarize", "write_results"]
