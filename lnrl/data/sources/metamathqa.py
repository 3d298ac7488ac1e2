"""MetaMathQA: `query` / `response` rows, the answer after "The answer is: X" (a local file or the hub)."""

from __future__ import annotations

from lnrl.data.records import DataError, get_field
from lnrl.data.sources.files import train_eval
from lnrl.data.sources.registry import SourceSplit, normalize_answer, register_source

_ANSWER_IS = "The answer is"


@register_source("metamathqa")
def metamathqa(path: str = "meta-math/MetaMathQA", eval_path: str | None = None, n_train: int | None = None,
               n_eval: int | None = None, eval_fraction: float = 0.1, seed: int = 0,
               on_error: str = "raise") -> SourceSplit:
    """MetaMathQA: `query` / `response` rows, the answer after "The answer is: X".

    The hub has only a train split, so evaluation is a seeded hold-out keyed by `original_question`
    when present: all rephrasings of one question stay on the same side.
    """
    from lnrl.verify.answers import extract_answer

    def parse(row: dict, loc: str):
        question = get_field(row, "query", str, loc, nonempty=True)
        response = get_field(row, "response", str, loc, nonempty=True).strip()
        at = response.rfind(_ANSWER_IS)
        if at < 0:
            raise DataError(f"{loc}: field 'response': no '{_ANSWER_IS}: X' final-answer phrase")
        answer = extract_answer(response[at:])
        if not answer:
            raise DataError(f"{loc}: field 'response': empty final answer after '{_ANSWER_IS}'")
        extra = {k: row[k] for k in ("type", "original_question") if isinstance(row.get(k), str)}
        return question.strip(), response, normalize_answer(answer), extra

    return train_eval("metamathqa", path, parse, eval_path=eval_path, hub_config=None, hub_eval_split=None,
                      n_train=n_train, n_eval=n_eval, eval_fraction=eval_fraction, seed=seed, on_error=on_error,
                      key=lambda e: e.meta.get("original_question", e.question))
