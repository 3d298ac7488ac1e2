"""Collators: right padding, masks, labels, pair/group layout. Expected tensors written out by hand."""

from __future__ import annotations

import torch

from lnrl.data import GroupCollator, PairCollator, SFTCollator

PAD = 9
A = {"input_ids": [1, 2, 3, 4], "completion_mask": [0, 0, 1, 1]}
B = {"input_ids": [5, 6], "completion_mask": [0, 1]}
C = {"input_ids": [7, 8, 7], "completion_mask": [0, 1, 1]}


def t(x, dtype=torch.long):
    return torch.tensor(x, dtype=dtype)


def test_sft_collator_right_pads_and_masks_labels():
    batch = SFTCollator(PAD)([A, B])
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask", "labels"}
    assert torch.equal(batch["input_ids"], t([[1, 2, 3, 4], [5, 6, PAD, PAD]]))
    assert torch.equal(batch["attention_mask"], t([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert torch.equal(batch["completion_mask"], t([[0, 0, 1, 1], [0, 1, 0, 0]]))
    assert torch.equal(batch["labels"], t([[-100, -100, 3, 4], [-100, 6, -100, -100]]))
    assert all(v.dtype == torch.long for v in batch.values())


def test_pair_collator_puts_chosen_rows_then_rejected_rows():
    items = [{"chosen": A, "rejected": B, "ref_chosen": (-3.5, 2), "ref_rejected": (-1.0, 1), "weight": 0.5},
             {"chosen": C, "rejected": A, "ref_chosen": (-2.0, 2), "ref_rejected": (-4.0, 2), "weight": 1.5}]
    batch = PairCollator(PAD)(items)
    # rows: chosen_0, chosen_1, rejected_0, rejected_1, one padded length (4)
    assert torch.equal(batch["input_ids"], t([[1, 2, 3, 4], [7, 8, 7, PAD], [5, 6, PAD, PAD], [1, 2, 3, 4]]))
    assert torch.equal(batch["completion_mask"], t([[0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]]))
    assert torch.equal(batch["attention_mask"], t([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]))
    assert torch.equal(batch["ref_logp_sum"], t([-3.5, -2.0, -1.0, -4.0], torch.float32))
    assert torch.equal(batch["ref_n_tokens"], t([2, 2, 1, 2]))
    assert torch.equal(batch["weights"], t([0.5, 1.5], torch.float32))
    # ref cached for every completion = its completion token count
    assert torch.equal(batch["ref_n_tokens"], batch["completion_mask"].sum(1))


def test_pair_collator_omits_refs_unless_every_pair_has_them():
    items = [{"chosen": A, "rejected": B, "ref_chosen": (-3.5, 2), "ref_rejected": None, "weight": 1.0},
             {"chosen": C, "rejected": A, "ref_chosen": (-2.0, 2), "ref_rejected": (-4.0, 2), "weight": 1.0}]
    batch = PairCollator(PAD)(items)
    assert "ref_logp_sum" not in batch and "ref_n_tokens" not in batch
    assert batch["input_ids"].shape == (4, 4) and batch["weights"].shape == (2,)


def test_group_collator_flattens_members_and_pads_gold_separately():
    g0 = {"members": [A, B], "is_positive": [True, False], "ranks": [1, 2], "refs": [(-1.0, 2), (-2.0, 1)],
          "gold": B}
    g1 = {"members": [C, A, B], "is_positive": [False, True, False], "ranks": [None, None, None],
          "refs": [(-3.0, 2), (-4.0, 2), (-5.0, 1)], "gold": C}
    batch = GroupCollator(PAD)([g0, g1])
    assert batch["input_ids"].shape == (5, 4)
    assert torch.equal(batch["input_ids"][2], t([7, 8, 7, PAD]))
    assert torch.equal(batch["group_ids"], t([0, 0, 1, 1, 1]))
    assert torch.equal(batch["is_positive"], t([True, False, False, True, False], torch.bool))
    assert torch.equal(batch["ranks"], t([1, 2, 0, 0, 0]))  # 0 = no rank
    assert torch.equal(batch["ref_logp_sum"], t([-1.0, -2.0, -3.0, -4.0, -5.0], torch.float32))
    assert torch.equal(batch["ref_n_tokens"], t([2, 1, 2, 2, 1]))
    # gold rows: one per group, padded to their own length (3), not the members' (4)
    assert torch.equal(batch["gold_input_ids"], t([[5, 6, PAD], [7, 8, 7]]))
    assert torch.equal(batch["gold_attention_mask"], t([[1, 1, 0], [1, 1, 1]]))
    assert torch.equal(batch["gold_completion_mask"], t([[0, 1, 0], [0, 1, 1]]))


def test_group_collator_without_refs():
    g = {"members": [A], "is_positive": [True], "ranks": [None], "refs": [None], "gold": A}
    batch = GroupCollator(PAD)([g])
    assert "ref_logp_sum" not in batch and torch.equal(batch["group_ids"], t([0]))
