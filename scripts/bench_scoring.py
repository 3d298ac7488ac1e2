#!/usr/bin/env python
"""Forward+backward cost of scoring a training batch: the plain path vs lnrl.scoring's fast path.

    .venv/bin/python scripts/bench_scoring.py                       # all cases, all configs, 3 reps
    .venv/bin/python scripts/bench_scoring.py --cases dpo --reps 5 --configs plain,all
    .venv/bin/python scripts/bench_scoring.py --padding-only        # padding statistics, no model

Batches are built from real GSM8K rows (../shared/data/gsm8k/train.jsonl) with the embedded
tokenizer and the chat template's default system prompt, collated by the real collators:
    dpo    4 pairs (chosen = the question's gold CoT, rejected = another question's), PairCollator
    aftK   --groups groups of K completions (other questions' gold CoTs) + the gold row, GroupCollator,
           members and gold rows scored together as AFTModule does
Configs (the levers of lnrl.scoring.score_batch):
    plain  sequence_logps(model(input_ids, attention_mask).logits, ...): [B, T, V] logits
    head   LM head only on scored positions, chunked; one padded forward
    share  head + each prompt once (share_prompt=True, trim=False)
    trim   head + length sub-batches (share_prompt=False, trim=True)
    all    head + share + trim (the default of score_batch)
Each config runs in its own worker process (so resource.getrusage's peak RSS is that config's),
one worker per config for a case; repetitions are interleaved across configs (rotating which goes
first) after one warm-up step each. Wall and CPU (process) seconds are both reported: on a shared
machine CPU seconds are the steadier measure. tokens/s counts real (non-padding) tokens per wall
second. The loss is the registry's (dpo / aft boundary + nll on gold) on the returned scores; workers
report its value so the configs can be checked to agree.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
CONFIGS = {
    "plain": None,
    "head": {"share_prompt": False, "trim": False},
    "share": {"share_prompt": True, "trim": False},
    "trim": {"share_prompt": False, "trim": True},
    "all": {"share_prompt": True, "trim": True},
}


def gsm8k(n: int) -> list[dict]:
    with open(GSM8K) as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def make_batch(case: str, tok, *, seed: int, groups: int, pairs: int, max_length: int, offset: int = 0) -> dict:
    """A collated batch for `case` (dpo | aftK) from GSM8K rows; deterministic in seed and offset."""
    from lnrl.data.collate import GroupCollator, PairCollator
    from lnrl.data.tokenize import encode_completion, encode_prompt, join

    data = gsm8k(2000)
    rng = random.Random(seed * 1000 + offset)
    pick = rng.sample(range(len(data)), 64)
    rows = lambda q, a: join(encode_prompt(tok, data[q]["question"]),  # noqa: E731
                             encode_completion(tok, data[a]["answer"]), max_length)
    if case == "dpo":
        items = [{"chosen": rows(q, q), "rejected": rows(q, pick[-1 - i]), "ref_chosen": (-50.0, 100),
                  "ref_rejected": (-60.0, 100)} for i, q in enumerate(pick[:pairs])]
        return PairCollator(tok.pad_token_id)(items)
    k = int(case.removeprefix("aft"))
    items = []
    for g, q in enumerate(pick[:groups]):
        others = pick[groups + g * k: groups + (g + 1) * k]
        items.append({"members": [rows(q, o) for o in others], "is_positive": [i % 2 == 0 for i in range(k)],
                      "gold": rows(q, q)})
    return GroupCollator(tok.pad_token_id)(items)


def step(model, batch: dict, case: str, config: str, losses: dict):
    """Loss of one batch through `config`; backward is the caller's."""
    from lnrl.data.collate import pad_rows
    from lnrl.scoring import SeqScores, score_batch, sequence_logps

    gold = case != "dpo"
    if CONFIGS[config] is None:
        if gold:  # members and gold rows padded together, one forward (as AFTModule does)
            rows = [{"input_ids": i[a.bool()].tolist(), "completion_mask": c[a.bool()].tolist()}
                    for p in ("", "gold_") for i, a, c in zip(batch[f"{p}input_ids"], batch[f"{p}attention_mask"],
                                                              batch[f"{p}completion_mask"])]
            b = pad_rows(rows, 0)
        else:
            b = batch
        scores = sequence_logps(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                b["input_ids"], b["completion_mask"])
    else:
        scores = score_batch(model, batch, prefixes=("", "gold_") if gold else ("",), **CONFIGS[config])
    if not gold:
        chosen, rejected = scores.chunk(2)
        ref_c, ref_r = SeqScores(batch["ref_logp_sum"], batch["ref_n_tokens"]).chunk(2)
        return losses["dpo"](policy_chosen=chosen, policy_rejected=rejected, ref_chosen=ref_c,
                             ref_rejected=ref_r).loss
    n = batch["input_ids"].shape[0]
    align = losses["aft"](scores=scores[:n], group_ids=batch["group_ids"], is_positive=batch["is_positive"])
    return align.loss + losses["nll"](scores=scores[n:]).loss


def worker(conn, config: str, case: str, args: dict) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    from lnrl.losses import build_loss
    from lnrl.models import load_model, load_tokenizer

    tok = load_tokenizer({"source": "embedded"})
    model = load_model({"source": "embedded"}, tok)
    model.train()
    batch = make_batch(case, tok, seed=args["seed"], groups=args["groups"], pairs=args["pairs"],
                       max_length=args["max_length"])
    losses = {"dpo": build_loss("dpo", beta=0.1), "aft": build_loss("aft", constraint="boundary"),
              "nll": build_loss("nll")}
    tokens = int(batch["attention_mask"].sum()) + int(batch.get("gold_attention_mask", torch.zeros(1)).sum())
    libc = ctypes.CDLL("libc.so.6")
    conn.send({"ready": True, "tokens": tokens})
    while conn.recv() == "step":
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(model, batch, case, config, losses)
        loss.backward()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        conn.send({"seconds": dt, "cpu_seconds": dc, "loss": loss.item(),
                   "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9})
        del loss
        model.zero_grad(set_to_none=True)
        libc.malloc_trim(0)  # hand freed memory back so idle workers do not crowd the active one
    conn.close()


def bench_case(case: str, configs: list[str], args: dict) -> dict:
    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    for c in configs:
        parent, child = ctx.Pipe()
        procs[c] = ctx.Process(target=worker, args=(child, c, case, args), daemon=True)
        procs[c].start()
        conns[c] = parent
    info = {c: conns[c].recv() for c in configs}
    tokens = info[configs[0]]["tokens"]
    results = {c: {"seconds": [], "cpu_seconds": [], "loss": None, "peak_rss_gb": 0.0} for c in configs}
    for rep in range(-args["warmup"], args["reps"]):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]  # rotate: no config always first
        for c in order:
            conns[c].send("step")
            r = conns[c].recv()
            if rep >= 0:
                results[c]["seconds"].append(r["seconds"])
                results[c]["cpu_seconds"].append(r["cpu_seconds"])
            results[c]["loss"], results[c]["peak_rss_gb"] = r["loss"], r["peak_rss_gb"]
            print(f"  {case} {c:6s} rep {rep:2d}: {r['seconds']:.2f} s wall, {r['cpu_seconds']:.2f} s cpu, "
                  f"loss {r['loss']:.6f}, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    for c in configs:
        conns[c].send("stop")
        procs[c].join(60)
    return {"tokens": tokens, "configs": results}


def padding_stats(tok, args) -> None:
    """Share of padded slots in collated batches, and what the fast path would run instead."""
    from lnrl.scoring import CALL_COST_TOKENS, _compact_rows, buckets

    print("| batch | real tokens | collated slots (padding) | distinct-prompt tokens | fast path slots (share+trim) |")
    print("|---|---|---|---|---|")
    for case in args["cases"]:
        real = slots = uniq = fast = 0
        for off in range(50):
            b = make_batch(case, tok, seed=args["seed"], groups=args["groups"], pairs=args["pairs"],
                           max_length=args["max_length"], offset=off)
            parts = [(b["input_ids"], b["attention_mask"], b["completion_mask"])]
            if case != "dpo":
                parts.append((b["gold_input_ids"], b["gold_attention_mask"], b["gold_completion_mask"]))
                # the plain path pads members and gold rows together
                T = max(p[0].shape[1] for p in parts)
                slots += T * sum(p[0].shape[0] for p in parts)
            else:
                slots += b["input_ids"].numel()
            rows = _compact_rows(parts)
            real += sum(len(r[0]) for r in rows)
            prompts = {}
            for ids, cm in rows:
                p = cm.index(1)
                prompts.setdefault(tuple(ids[:p]), []).append(len(ids) - p)
            uniq += sum(len(p) for p in prompts) + sum(sum(v) for v in prompts.values())
            pl = [len(p) for p in prompts]
            cl = [c for v in prompts.values() for c in v]
            for lens in (pl, cl):
                for run in buckets(lens, CALL_COST_TOKENS["cpu"]):
                    fast += len(run) * max(lens[i] for i in run)
        print(f"| {case} | {real} | {slots} ({1 - real / slots:.0%}) | {uniq} ({uniq / real:.0%} of real) | "
              f"{fast} ({fast / slots:.0%} of collated) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="dpo,aft2,aft4,aft8")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--padding-only", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    args = {"threads": a.threads, "pairs": a.pairs, "groups": a.groups, "max_length": a.max_length,
            "seed": a.seed, "reps": a.reps, "warmup": a.warmup, "cases": a.cases.split(",")}
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    if a.padding_only:
        from lnrl.models import load_tokenizer

        padding_stats(load_tokenizer({"source": "embedded"}), args)
        return
    configs = a.configs.split(",")
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    print(f"# {os.cpu_count()} CPUs, {a.threads} torch threads, load average {os.getloadavg()[0]:.2f} at start; "
          f"fp32 SmolLM2-135M-Instruct, max_length {a.max_length}, {a.reps} reps after {a.warmup} warm-up")
    print("| case | config | s/step wall, median (min-max) | CPU s/step | tokens/s | peak RSS GB | "
          "speed-up vs plain (wall / CPU) | loss |")
    print("|---|---|---|---|---|---|---|---|")
    out = {}
    for case in args["cases"]:
        res = bench_case(case, configs, args)
        out[case] = res
        plain = res["configs"].get("plain")
        for c, r in res["configs"].items():
            med, cpu = statistics.median(r["seconds"]), statistics.median(r["cpu_seconds"])
            speed = (f"{statistics.median(plain['seconds']) / med:.2f}x / "
                     f"{statistics.median(plain['cpu_seconds']) / cpu:.2f}x") if plain else "-"
            print(f"| {case} | {c} | {med:.2f} ({min(r['seconds']):.2f}-{max(r['seconds']):.2f}) | {cpu:.2f} | "
                  f"{res['tokens'] / med:.0f} | {r['peak_rss_gb']:.2f} | {speed} | {r['loss']:.6f} |", flush=True)
    print(f"# load average {os.getloadavg()[0]:.2f} at end")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
