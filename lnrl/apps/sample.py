"""lnrl-sample: k chains of thought per question from a policy, graded and profiled, as group records.

    lnrl-sample model=hf model.path=<vft run>/hf_model k=8 n_questions=512
    lnrl-sample ckpt_path=<run>/checkpoints/last.ckpt                # any Lightning checkpoint of lnrl
    lnrl-sample ... split=eval out_dir=outputs/candidates           # held-out candidates (assessment)

Output (docs/pipeline.md): `<out_dir>/shards/shard-NNNNN.jsonl` written as sampling goes, then the
merged `<out_dir>/groups.jsonl` and `<out_dir>/stats.json`; a re-run resumes (lnrl.sampling).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lnrl.apps import CONF
from lnrl.data.records import GroupRecord
from lnrl.data.sources import build_source
from lnrl.models import load_policy, pick_device
from lnrl.sampling import sample_to_dir
from lnrl.utils import to_dict


def sample(cfg: DictConfig) -> list[GroupRecord] | None:
    """The lnrl-sample stage from a composed `sample.yaml` config."""
    split = build_source(to_dict(cfg.data.source), on_error=cfg.data.get("on_error"))
    if cfg.split not in ("train", "eval"):
        raise ValueError(f"split={cfg.split!r}; expected train or eval")
    examples = split.train if cfg.split == "train" else split.eval
    examples = examples[: cfg.n_questions or None]
    model, tokenizer, name = load_policy(to_dict(cfg.model), cfg.get("ckpt_path"))
    model.to(pick_device(cfg.device))
    provenance = {"model": name, "checkpoint": cfg.get("ckpt_path"), "source": cfg.data.source.name,
                  "split": cfg.split}
    return sample_to_dir(model, tokenizer, examples, cfg.out_dir, k=cfg.k, temperature=cfg.temperature,
                         top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                         batch_size=cfg.batch_size, shard_size=cfg.shard_size,
                         system_prompt=cfg.data.get("system_prompt"), provenance=provenance,
                         max_shards=cfg.get("max_shards"))


@hydra.main(version_base="1.3", config_path=CONF, config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
