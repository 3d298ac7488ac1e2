"""Batched generation with the KV cache, shared by evaluation and sampling (one way to generate)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lnrl.data.tokenize import encode_prompt
from lnrl.distributed import is_sharded


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    truncated: bool          # hit max_new_tokens before the end-of-turn token


@torch.no_grad()
def generate(
    model,
    tokenizer,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    system_prompt: str | None = None,
    seed: int | None = None,
    desc: str = "generate",
    progress: bool = True,
) -> list[list[Generation]]:
    """Return `num_return_sequences` generations per question, in question order.

    Prompts are sorted by length so a batch wastes little padding; left padding keeps every
    prompt's last token next to the first generated one.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    prompts = [encode_prompt(tokenizer, q, system_prompt=system_prompt) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[Generation] | None] = [None] * len(prompts)
    generator_seed = seed
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="q")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = prompts[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        if generator_seed is not None:
            # Seed per batch so a resumed run reproduces the same samples for the same questions.
            torch.manual_seed(generator_seed + start)
        kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens,
                      num_return_sequences=num_return_sequences, pad_token_id=pad_id, eos_token_id=eos_id,
                      # A sharded model's forward is a collective: a rank whose batch finished keeps
                      # stepping until every rank has, or the others hang waiting for its all-gather.
                      synced_gpus=is_sharded(model))
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        seqs = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        new = seqs[:, width:].cpu()
        for row, i in enumerate(idx):
            gens = []
            for j in range(num_return_sequences):
                toks = new[row * num_return_sequences + j].tolist()
                finished = eos_id in toks
                toks = toks[: toks.index(eos_id)] if finished else toks
                gens.append(Generation(tokenizer.decode(toks, skip_special_tokens=True).strip(),
                                       len(toks), truncated=not finished))
            out[i] = gens
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return out  # type: ignore[return-value]
