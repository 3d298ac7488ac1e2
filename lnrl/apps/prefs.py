"""lnrl-prefs: preference records from sampled groups — ranks, pair weights, cached reference scores.

    lnrl-prefs input=outputs/demo/sample/groups.jsonl model=hf model.path=outputs/demo/vft/hf_model

Writes groups.jsonl (every method reads it), pairs.jsonl and stats.json to `out_dir` (lnrl.preferences). Reference scores use `data.max_length` / `data.system_prompt`, as training.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lnrl.apps import CONF
from lnrl.data.records import read_groups
from lnrl.models import load_policy, pick_device
from lnrl.preferences import build_prefs
from lnrl.reference import model_id
from lnrl.utils import to_dict


def prefs(cfg: DictConfig) -> dict:
    """The lnrl-prefs stage from a composed `prefs.yaml` config."""
    groups = read_groups(cfg.input)
    model = tokenizer = name = None
    if cfg.refscores:
        model_cfg = to_dict(cfg.model)
        model, tokenizer, _ = load_policy(model_cfg)
        model.to(pick_device(cfg.device))
        name = model_id(model_cfg)
    return build_prefs(groups, cfg.out_dir, ref_model=model, tokenizer=tokenizer, ref_model_name=name,
                       max_length=cfg.data.max_length, system_prompt=cfg.data.get("system_prompt"),
                       batch_size=cfg.batch_size, pairing=cfg.data.pairing, gold_as_chosen=cfg.data.gold_as_chosen,
                       near_wrongness=cfg.near_wrongness, w_min=cfg.w_min)


@hydra.main(version_base="1.3", config_path=CONF, config_name="prefs")
def main(cfg: DictConfig) -> None:
    prefs(cfg)


if __name__ == "__main__":
    main()
