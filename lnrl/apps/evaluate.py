"""lnrl-eval: evaluate one model on the held-out split of a data source.

    lnrl-eval model=hf model.path=<run>/hf_model data=gsm_symbolic
    lnrl-eval ... eval.candidates_path=<lnrl-sample split=eval dir>/groups.jsonl   # + val/assessment_acc

Writes metrics.json and generations.jsonl (one record per question) into its run dir.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lnrl.apps import CONF
from lnrl.data.records import read_groups
from lnrl.evaluation import evaluate_model
from lnrl.models import load_policy, pick_device
from lnrl.utils import build_datamodule, to_dict, write_json, write_jsonl

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate the configured model on the held-out split (the lnrl-eval stage; the pipeline calls it)."""
    model, tokenizer, _ = load_policy(to_dict(cfg.model))
    model.to(pick_device(cfg.get("device") or "auto"))
    dm = build_datamodule(cfg, tokenizer)
    dm.setup("validate")
    examples = dm.eval_examples[: cfg.eval.n_examples or None]
    candidates = read_groups(cfg.eval.candidates_path) if cfg.eval.get("candidates_path") else None
    metrics, records = evaluate_model(model, tokenizer, examples, max_new_tokens=cfg.eval.max_new_tokens,
                                      batch_size=cfg.eval.batch_size, max_length=dm.max_length,
                                      system_prompt=dm.system_prompt, candidates=candidates,
                                      include_gold=cfg.eval.get("include_gold", True))
    metrics["model"] = cfg.model.name
    out = Path(cfg.paths.output_dir)
    write_json(out / "metrics.json", metrics)
    write_jsonl(out / "generations.jsonl", records)
    log.info("metrics: %s", json.dumps(metrics, indent=2))
    return metrics


@hydra.main(version_base="1.3", config_path=CONF, config_name="eval")
def main(cfg: DictConfig) -> dict:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
