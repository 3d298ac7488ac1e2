"""lnrl-eval: evaluate one model on the held-out split of a data source.

    lnrl-eval model=hf model.path=<run>/hf_model data=gsm_symbolic
    lnrl-eval ... eval.candidates_path=<lnrl-sample split=eval dir>/groups.jsonl   # + val/assessment_acc
    lnrl-eval ... data=gsm8k eval.protocol=harness_gsm8k   # lm-evaluation-harness's 5-shot gsm8k numbers
    lnrl-eval ... eval.samples.k=8                         # + val/pass@1, val/pass@k, val/maj@k

Writes into its run dir: metrics.json (aggregates), generations.jsonl (one record per held-out question;
harness.jsonl instead with eval.protocol=harness_gsm8k), assessment.jsonl (per candidate question: pairs,
correctly ordered pairs), nll.jsonl (per question: gold-CoT log-likelihood and tokens) and with
eval.samples samples.jsonl (per question: its samples, pass@1, pass@k, maj@k) — the per-question records
the results tables bootstrap over (docs/evaluation_protocols.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lnrl.apps import CONF
from lnrl.data.records import read_groups
from lnrl.evaluation import evaluate_model, near_miss_ids
from lnrl.models import load_policy, pick_device
from lnrl.utils import build_datamodule, to_dict, write_json

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate the configured model on the held-out split (the lnrl-eval stage; the pipeline calls it)."""
    model, tokenizer, _ = load_policy(to_dict(cfg.model))
    model.to(pick_device(cfg.get("device") or "auto"))
    dm = build_datamodule(cfg, tokenizer)
    dm.setup("validate")
    examples = dm.eval_examples[: cfg.eval.n_examples or None]
    candidates = read_groups(cfg.eval.candidates_path) if cfg.eval.candidates_path else None
    near = near_miss_ids(cfg.eval.near_miss_from) if cfg.eval.near_miss_from else None
    result = evaluate_model(model, tokenizer, examples, max_new_tokens=cfg.eval.max_new_tokens,
                            batch_size=cfg.eval.batch_size, max_length=dm.max_length, system_prompt=dm.system_prompt,
                            candidates=candidates, include_gold=cfg.eval.include_gold,
                            nll_examples=cfg.eval.nll_examples, near_miss_ids=near, protocol=cfg.eval.protocol,
                            shots_from=dm.train_examples, samples=cfg.eval.samples)
    metrics = {**result.metrics, "model": cfg.model.name}
    out = Path(cfg.paths.output_dir)
    # Per-question records next to the aggregates, so a results table can give intervals and pair models.
    result.write_records(out)
    write_json(out / "metrics.json", metrics)  # last: its presence marks the stage done
    log.info("metrics: %s", json.dumps(metrics, indent=2))
    return metrics


@hydra.main(version_base="1.3", config_path=CONF, config_name="eval")
def main(cfg: DictConfig) -> dict:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
