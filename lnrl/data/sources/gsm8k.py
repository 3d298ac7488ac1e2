"""GSM8K: `question` / `answer` rows whose answer is a CoT ending in "#### N" (a local file or the hub)."""

from __future__ import annotations

import re

from lnrl.data.records import DataError, get_field
from lnrl.data.sources.files import train_eval
from lnrl.data.sources.registry import SourceSplit, normalize_answer, register_source

_CALC = re.compile(r"<<[^<>]*>>")


@register_source("gsm8k")
def gsm8k(path: str = "openai/gsm8k", config: str = "main", eval_path: str | None = None,
          strip_calculator: bool = False, n_train: int | None = None, n_eval: int | None = None,
          eval_fraction: float = 0.1, seed: int = 0, on_error: str = "raise") -> SourceSplit:
    """GSM8K: `question` / `answer` rows whose answer is a CoT ending in "#### N".

    strip_calculator removes the `<<48/2=24>>` calculator annotations from the CoT.
    """

    def parse(row: dict, loc: str):
        question = get_field(row, "question", str, loc, nonempty=True)
        cot = get_field(row, "answer", str, loc, nonempty=True).strip()
        if "####" not in cot:
            raise DataError(f"{loc}: field 'answer': no '#### N' final-answer line")
        answer = normalize_answer(cot.rsplit("####", 1)[1])
        if not answer:
            raise DataError(f"{loc}: field 'answer': empty final answer after '####'")
        if strip_calculator:
            cot = _CALC.sub("", cot)
        return question.strip(), cot, answer, {}

    return train_eval("gsm8k", path, parse, eval_path=eval_path, hub_config=config, hub_eval_split="test",
                      n_train=n_train, n_eval=n_eval, eval_fraction=eval_fraction, seed=seed, on_error=on_error)
