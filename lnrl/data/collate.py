"""Collators: encoded rows -> right-padded tensors.

Rows are right-padded so position t holds the t-th token of every sequence and the scorer's
"token t is scored by logits at t-1" shift lines up; padding is masked out by attention_mask and
completion_mask, so the pad id itself never matters (eos doubles as pad for SmolLM2).
"""

from __future__ import annotations

import torch


def pad_rows(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """[{"input_ids", "completion_mask"}] -> input_ids, attention_mask, completion_mask [N, T] long."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    comp = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        attn[i, :n] = 1
        comp[i, :n] = torch.tensor(r["completion_mask"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}


def ref_tensors(refs: list[tuple[float, int] | None]) -> dict[str, torch.Tensor]:
    """ref_logp_sum [N] float, ref_n_tokens [N] long when every row has a cached ref, else {}."""
    if not refs or any(r is None for r in refs):
        return {}
    return {"ref_logp_sum": torch.tensor([float(r[0]) for r in refs], dtype=torch.float32),
            "ref_n_tokens": torch.tensor([int(r[1]) for r in refs], dtype=torch.long)}


class SFTCollator:
    """Items {"input_ids", "completion_mask"} -> input_ids, attention_mask, completion_mask, labels [B,T].

    labels = input_ids with -100 wherever completion_mask == 0 (prompt and padding).
    """

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_rows(items, self.pad_id)
        batch["labels"] = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        return batch


class PairCollator:
    """Items {"chosen", "rejected", "ref_chosen", "ref_rejected", "weight"} -> [2B, T] rows.

    Rows 0..B-1 are the chosen completions, rows B..2B-1 the rejected ones (pair i is rows i and
    B+i), padded to one length so one forward pass scores both. ref_logp_sum / ref_n_tokens [2B]
    in the same order when every pair has cached reference scores; weights [B].
    """

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_rows([it["chosen"] for it in items] + [it["rejected"] for it in items], self.pad_id)
        batch.update(ref_tensors([it.get("ref_chosen") for it in items] + [it.get("ref_rejected") for it in items]))
        batch["weights"] = torch.tensor([float(it.get("weight", 1.0)) for it in items], dtype=torch.float32)
        return batch


class GroupCollator:
    """Items {"members": [row], "is_positive": [bool], "ranks": [int|None], "refs": [ref|None], "gold": row}.

    All members of the G groups flattened to [N, T] with group_ids [N] (0..G-1 within the batch),
    is_positive [N] bool, ranks [N] long (0 where absent), ref_logp_sum / ref_n_tokens [N] when every
    member has a cached ref; the gold solutions for the SFT term as gold_input_ids,
    gold_attention_mask, gold_completion_mask [G, T'].
    """

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        rows, gids, pos, ranks, refs = [], [], [], [], []
        for g, it in enumerate(items):
            rows += it["members"]
            gids += [g] * len(it["members"])
            pos += [bool(p) for p in it["is_positive"]]
            ranks += [int(r) if r is not None else 0 for r in it.get("ranks") or [None] * len(it["members"])]
            refs += it.get("refs") or [None] * len(it["members"])
        batch = pad_rows(rows, self.pad_id)
        batch["group_ids"] = torch.tensor(gids, dtype=torch.long)
        batch["is_positive"] = torch.tensor(pos, dtype=torch.bool)
        batch["ranks"] = torch.tensor(ranks, dtype=torch.long)
        batch.update(ref_tensors(refs))
        gold = pad_rows([it["gold"] for it in items], self.pad_id)
        batch.update({f"gold_{k}": v for k, v in gold.items()})
        return batch
