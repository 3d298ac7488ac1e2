"""Evaluation: answer accuracy and length of greedy generations, and token NLL of gold solutions.

`lnrl-eval model=hf model.path=<run>/hf_model data=gsm_symbolic` evaluates any model on a data
source's held-out split and writes metrics.json and generations.jsonl in its run dir.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from lnrl.assessment import assessment_accuracy
from lnrl.data.collate import SFTCollator
from lnrl.data.records import Example, GroupRecord, read_groups
from lnrl.data.tokenize import encode
from lnrl.generation import generate
from lnrl.scoring import sequence_logps
from lnrl.verify import MathVerifier
from lnrl.verify.answers import answers_match, extract_answer

from lnrl.utils import write_json, write_jsonl  # importing lnrl.utils also registers config resolvers

log = logging.getLogger(__name__)

# A generation is degenerate when the MathVerifier's degeneracy is at least this (no answer,
# truncated, looping or garbage text: docs/verifier.md); val/degenerate_rate is their share.
DEGENERATE_AT = 0.5


def answer_accuracy(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int = 256,
                    batch_size: int = 16, system_prompt: str | None = None,
                    progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Greedy-decode every question; return (metrics, one record per example)."""
    gens = generate(model, tokenizer, [e.question for e in examples], max_new_tokens=max_new_tokens,
                    batch_size=batch_size, system_prompt=system_prompt, desc="eval: generate",
                    progress=progress)
    records = []
    verifier = MathVerifier()
    for ex, (g,) in zip(examples, gens):
        pred = extract_answer(g.text)
        profile = verifier.profile(ex.question, g.text, ex.answer, truncated=g.truncated)
        records.append({"id": ex.id, "question": ex.question, "answer": ex.answer, "completion": g.text,
                        "pred": pred, "correct": answers_match(pred, ex.answer),
                        "n_tokens": g.n_tokens, "truncated": g.truncated, "degeneracy": profile.degeneracy,
                        "profile": profile.to_dict()})
    n = max(len(records), 1)
    metrics = {
        "val/answer_acc": sum(r["correct"] for r in records) / n,
        "val/gen_len": sum(r["n_tokens"] for r in records) / n,
        "val/truncated_rate": sum(r["truncated"] for r in records) / n,
        "val/degenerate_rate": sum(r["degeneracy"] >= DEGENERATE_AT for r in records) / n,
    }
    return metrics, records


@torch.no_grad()
def gold_nll(model, tokenizer, examples: Sequence[Example], *, max_length: int = 512, batch_size: int = 8,
             system_prompt: str | None = None, progress: bool = True) -> float:
    """Token-level NLL of the gold solutions (mean over all solution tokens, as VFT trains it)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats = [f for e in examples
             if (f := encode(tokenizer, e.question, e.solution, max_length, system_prompt=system_prompt))]
    collate = SFTCollator(tokenizer.pad_token_id)
    total_logp, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(feats), batch_size), desc="eval: gold nll", disable=not progress):
        batch = collate(feats[start:start + batch_size])
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        scores = sequence_logps(logits, batch["input_ids"].to(device), batch["completion_mask"].to(device))
        total_logp += scores.logp_sum.sum().item()
        total_tokens += int(scores.n_tokens.sum().item())
    model.train(was_training)
    return -total_logp / max(total_tokens, 1)


def evaluate_model(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int = 256,
                   batch_size: int = 16, max_length: int = 512, system_prompt: str | None = None,
                   candidates: Sequence[GroupRecord] | None = None, include_gold: bool = True,
                   progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """All generation-free and generation-based held-out metrics of one model.

    With `candidates` (group records of held-out questions, e.g. `lnrl-sample split=eval` output)
    also `val/assessment_acc` (lnrl.assessment).
    """
    metrics, records = answer_accuracy(model, tokenizer, examples, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    metrics["val/nll"] = gold_nll(model, tokenizer, examples, max_length=max_length,
                                  batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    if candidates:
        metrics.update(assessment_accuracy(model, tokenizer, candidates, include_gold=include_gold,
                                           batch_size=batch_size, max_length=max_length,
                                           system_prompt=system_prompt, progress=progress))
    metrics["val/n_examples"] = float(len(examples))
    return metrics, records


def write_results(out_dir: str | Path, metrics: dict, records: Sequence[dict] | None = None) -> None:
    write_json(Path(out_dir) / "metrics.json", metrics)
    if records is not None:
        write_jsonl(Path(out_dir) / "generations.jsonl", records)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate the configured model on the held-out split (the lnrl-eval stage; the pipeline calls it)."""
    from lnrl.models import load_model, load_tokenizer
    from lnrl.refscores import pick_device
    from lnrl.utils import build_datamodule

    tokenizer = load_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer)
    dm.setup("validate")
    examples = dm.eval_examples[: cfg.eval.n_examples or None]
    model = load_model(cfg.model, tokenizer).to(pick_device(cfg.get("device") or "auto"))
    candidates = read_groups(cfg.eval.candidates_path) if cfg.eval.get("candidates_path") else None
    metrics, records = evaluate_model(model, tokenizer, examples, max_new_tokens=cfg.eval.max_new_tokens,
                                      batch_size=cfg.eval.batch_size, max_length=dm.max_length,
                                      system_prompt=dm.system_prompt, candidates=candidates,
                                      include_gold=cfg.eval.get("include_gold", True))
    metrics["model"] = cfg.model.name
    write_results(cfg.paths.output_dir, metrics, records)
    log.info("metrics: %s", json.dumps(metrics, indent=2))
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    """lnrl-eval: evaluate one model on the held-out split of a data source."""
    return evaluate(cfg)
