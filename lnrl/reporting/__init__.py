"""Results tables and plots, in one place for every command that writes them: the runs under a
directory grouped over seeds (`runs`, `report`: lnrl-report) and the main job's comparison
(`results`: lnrl.apps.pipeline). Formatting lives in `tables`, drawing in `plots`."""

from lnrl.reporting.report import report
from lnrl.reporting.results import METRICS, collect_results, run_sizes, write_results
from lnrl.reporting.runs import DEFAULT_METRICS, SETTING_FIELDS, load_run, load_runs, mean_std, summarize
from lnrl.reporting.tables import markdown_table, results_table

__all__ = ["DEFAULT_METRICS", "METRICS", "SETTING_FIELDS", "collect_results", "load_run", "load_runs",
           "markdown_table", "mean_std", "report", "results_table", "run_sizes", "summarize", "write_results"]
