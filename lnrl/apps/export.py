"""lnrl-export: a Lightning checkpoint (one .ckpt file or a sharded checkpoint directory) -> a
`save_pretrained` directory that `model=hf model.path=<dir>` loads.

    lnrl-export outputs/train/runs/<run>/checkpoints/last.ckpt                # -> .../checkpoints/last_hf
    lnrl-export <run>/checkpoints/step100.ckpt -o exports/step100
    lnrl-eval model=hf model.path=exports/step100 data=gsm_symbolic            # then evaluate it

The model config comes from the checkpoint (`lnrl_model_cfg`, written by LnrlModule.on_save_checkpoint;
else the saved hyper-parameters), or from the run's `.hydra/config.yaml`. Only the policy (`model.*`
keys) is exported; a live DPO reference or optimizer states are left behind (lnrl.models.export).
"""

from __future__ import annotations

import argparse
import logging

from lnrl.models import SOURCES, export_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lnrl-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint directory")
    parser.add_argument("-o", "--out", help="output directory (default: <checkpoint>_hf next to it)")
    parser.add_argument("--model-source", choices=SOURCES, help="override the model config found in the checkpoint")
    parser.add_argument("--model-path", help="with --model-source hf: the base model's directory or hub id")
    parser.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.model_source == "hf" and not args.model_path:
        parser.error("--model-source hf needs --model-path (the base model's directory or hub id)")
    cfg = None
    if args.model_source:
        cfg = {"source": args.model_source, "path": args.model_path}
    # The directory on stdout (and no return value: console scripts sys.exit() what main returns).
    print(export_checkpoint(args.checkpoint, args.out, model_cfg=cfg, tokenizer=not args.no_tokenizer))


if __name__ == "__main__":
    main()
