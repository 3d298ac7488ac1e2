"""lnrl-refscores: cache the reference model's scores of every completion in a group file.

    lnrl-refscores input=groups.jsonl                          # embedded model, overwrite in place
    lnrl-refscores input=groups.jsonl output=scored.jsonl model=hf model.path=<run>/hf_model
    lnrl-refscores input=groups.jsonl data=gsm8k data.max_length=512   # the training run's data config
    lnrl-refscores input=prefs_trl.jsonl output=scored.jsonl           # TRL-format prompt/chosen/rejected rows

Rows are tokenized as the training run's `data` config says (`data.max_length`, `data.system_prompt`),
so a cached ref equals what a live reference computes in training (lnrl.reference). Resumable. The
input's format is detected like the datamodule's (`data.prefs_format`: auto | lnrl | trl): an lnrl group
file gets `ref` / `gold_ref`, TRL preference rows get `ref_chosen` / `ref_rejected`.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from lnrl.apps import CONF
from lnrl.data.trl_format import detect_format
from lnrl.models import load_policy, pick_device
from lnrl.reference import model_id, score_file, score_trl_file
from lnrl.utils import to_dict

log = logging.getLogger(__name__)


def refscores(cfg: DictConfig) -> dict[str, int]:
    model_cfg = to_dict(cfg.model)
    model, tokenizer, _ = load_policy(model_cfg)
    model.to(pick_device(cfg.device))
    score = score_trl_file if detect_format(cfg.input, cfg.data.get("prefs_format") or "auto") == "trl" else score_file
    counts = score(model, tokenizer, cfg.input, cfg.get("output"), ref_model=model_id(model_cfg),
                   batch_size=cfg.batch_size, max_length=cfg.data.max_length,
                   system_prompt=cfg.data.get("system_prompt"), chunk_size=cfg.chunk_size)
    log.info("refscores: %s -> %s: %s", cfg.input, cfg.get("output") or cfg.input, counts)
    return counts


@hydra.main(version_base="1.3", config_path=CONF, config_name="refscores")
def main(cfg: DictConfig) -> None:
    refscores(cfg)


if __name__ == "__main__":
    main()
