"""Chat-template tokenization with a completion mask.

A training row is  prompt_ids + completion_ids  where

    prompt_ids     = apply_chat_template([system?, user: question], add_generation_prompt=True)
    completion_ids = tokenizer(completion + eos, add_special_tokens=False)

Both halves are tokenized separately and concatenated, never re-tokenized across the boundary, so
the prompt the model sees in training is exactly the prompt `encode_prompt` gives generation.
The eos (`<|im_end|>` for SmolLM2) closes the completion so the model learns to stop. A sampled
completion that was cut at max_new_tokens (`truncated`) never ended, so it is encoded without the eos:
scoring or training an end-of-turn the model never produced would misstate the sample.
completion_mask is 1 exactly on completion tokens: only they are scored and trained on.
"""

from __future__ import annotations

from collections.abc import Mapping

OVERLONG = ("truncate", "drop")


def _ids(out) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):  # a batch of one
        (out,) = out
    return [int(i) for i in out]


def messages(question: str, system_prompt: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return msgs + [{"role": "user", "content": question}]


def encode_prompt(tokenizer, question: str, system_prompt: str | None = None) -> list[int]:
    """Prompt ids for generation: the chat template with the assistant turn opened."""
    return encode_chat(tokenizer, messages(question, system_prompt))


def encode_chat(tokenizer, msgs: list[dict]) -> list[int]:
    """Prompt ids of a conversation (outside data's prompt messages, lnrl/data/trl_format.py): the chat
    template with the assistant turn opened, exactly as `encode_prompt` does for one question."""
    return _ids(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))


def encode_completion(tokenizer, completion: str, eos: bool = True) -> list[int]:
    """Completion ids, closed by the eos unless `eos` is false (a completion cut by the token limit)."""
    return _ids(tokenizer(completion + (tokenizer.eos_token if eos else ""), add_special_tokens=False))


def _count(stats: dict | None, key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


def join(prompt_ids: list[int], completion_ids: list[int], max_length: int, overlong: str = "truncate",
         stats: dict | None = None) -> dict | None:
    """Concatenate and apply the overlong policy; None when the row is dropped.

    truncate: cut the completion from the right (it loses its eos: the model is not taught to stop
    there); a prompt that alone fills max_length leaves no completion token and is dropped even so.
    drop: any row longer than max_length is dropped. Counted in stats: overlong_truncated,
    overlong_dropped, prompt_too_long.
    """
    if overlong not in OVERLONG:
        raise ValueError(f"overlong={overlong!r}; expected one of {OVERLONG}")
    if len(prompt_ids) + len(completion_ids) > max_length:
        if len(prompt_ids) >= max_length:
            _count(stats, "prompt_too_long")
            return None
        if overlong == "drop":
            _count(stats, "overlong_dropped")
            return None
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
        _count(stats, "overlong_truncated")
    return {"input_ids": list(prompt_ids) + list(completion_ids),
            "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}


def encode(tokenizer, question: str, completion: str, max_length: int, system_prompt: str | None = None,
           overlong: str = "truncate", stats: dict | None = None, eos: bool = True) -> dict | None:
    """{"input_ids", "completion_mask"} for one (question, completion), or None when dropped.
    eos=False for a completion that was cut by the token limit (module docstring)."""
    return join(encode_prompt(tokenizer, question, system_prompt), encode_completion(tokenizer, completion, eos),
                max_length, overlong, stats)
