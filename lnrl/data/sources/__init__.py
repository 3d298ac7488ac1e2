"""Data sources: each turns a config node into train and held-out `Example`s.

A source is a function registered in SOURCES (`registry.py`); `build_source({"name": ..., **options})`
calls it. One file per source: `gsm_symbolic.py`, `gsm8k.py`, `metamathqa.py`, `jsonl.py`; the file
sources share `files.py` (file / hub rows, the held-out split). Adding one is a function returning
`SourceSplit` plus `@register_source("name")`, imported below (docs/data.md). Every loader names
file, line and field on bad input; `on_error="skip"` skips and counts instead.
"""

from lnrl.data.sources.registry import SOURCES, SourceSplit, _plain, build_source, normalize_answer, register_source

# Importing a source module registers it (in this order: SOURCES lists them so).
from lnrl.data.sources import gsm_symbolic, gsm8k, metamathqa, jsonl  # noqa: E402, F401  isort: skip
from lnrl.data.sources.files import is_hub_id, read_rows  # noqa: E402

__all__ = ["SOURCES", "SourceSplit", "build_source", "is_hub_id", "normalize_answer", "read_rows",
           "register_source", "_plain"]
