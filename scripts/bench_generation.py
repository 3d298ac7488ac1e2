"""Generation throughput: lnrl's engine (lnrl.generation) against transformers' `model.generate`.

    .venv/bin/python scripts/bench_generation.py                     # docs/performance.md's table (11 min on 2 cores)
    .venv/bin/python scripts/bench_generation.py --reps 1 --max-new-tokens 32   # a quick look
    .venv/bin/python scripts/bench_generation.py --sweep            # engine only: rows / token budget

On the embedded SmolLM2-135M-Instruct with real gsm_symbolic questions, fp32, torch.set_num_threads(2),
the arms are interleaved in one run (every repetition runs every arm once, in the same order) so load
from other processes spreads over all of them:

- sampling k completions per question (k = 4 and 8; temperature 0.8, top_p 0.95, --max-new-tokens, default 80):
  the engine (`generate`) and transformers' `generate(num_return_sequences=k)` through lnrl's own
  wrapper (`_generate_hf`: same prompts, same left padding, same decoding), both with --rows sequences
  at once, so --rows // k questions per transformers call and per engine batch; top_k=0 on both sides
  (transformers would otherwise add its default top_k=50);
- greedy evaluation decoding (k = 1, --max-new-tokens), the same way, on --greedy-questions
  questions, --greedy-rows at once (evaluation's batch size).

Each sampling arm decodes the same --questions questions; reported: sequences/s, new tokens/s (tokens before
EOS, EOS counted, as generate produces them), the mean new tokens per sequence, and engine / HF ratios
of sequences/s per setting, as the median over repetitions and per repetition (also per CPU second of
this process, a check that is less sensitive to other processes sharing the cores). Before the timed
repetitions every arm decodes its whole prompt set once, untimed, to --warmup-max-new-tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                   ("TOKENIZERS_PARALLELISM", "false"), ("WANDB_MODE", "offline")):
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lnrl.data.sources import build_source  # noqa: E402
from lnrl.data.tokenize import encode_prompt  # noqa: E402
from lnrl.generation import Sampling, _generate_hf, decode_tokens  # noqa: E402
from lnrl.models import load_model, load_tokenizer  # noqa: E402


def run_arm(engine: str, model, tok, prompts, *, k: int, rows: int, max_new_tokens: int, sampling: Sampling,
            seed: int, max_batch_tokens: int | None = None, refill: bool = True) -> dict:
    """Decode every prompt k times; seconds, sequences and new tokens (EOS included, as generated)."""
    common = dict(max_new_tokens=max_new_tokens, batch_size=max(1, rows // k), k=k, sampling=sampling,
                  eos_id=tok.eos_token_id)
    start, cpu = time.perf_counter(), time.process_time()
    if engine == "hf":
        out = _generate_hf(model, prompts, seed=seed, pad_id=tok.pad_token_id, **common)
    else:
        extra = {"max_batch_tokens": max_batch_tokens} if max_batch_tokens else {}
        out = decode_tokens(model, prompts, seed=seed, refill=refill, **common, **extra)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    seqs = [t for per_q in out for t in per_q]
    return {"s": seconds, "cpu": cpu, "seqs": len(seqs), "tokens": sum(len(t) for t in seqs)}


def fmt_row(name: str, results: list[dict]) -> str:
    seq_s = statistics.median(r["seqs"] / r["s"] for r in results)
    tok_s = statistics.median(r["tokens"] / r["s"] for r in results)
    mean_len = sum(r["tokens"] for r in results) / sum(r["seqs"] for r in results)
    secs = " ".join(f"{r['s']:.0f}" for r in results)
    return f"| {name} | {seq_s:.3f} | {tok_s:.1f} | {mean_len:.0f} | {secs} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=8, help="questions each arm decodes per repetition")
    ap.add_argument("--rows", type=int, default=32, help="sequences decoded at once when sampling, both sides "
                    "(conf/sample.yaml batch_size)")
    ap.add_argument("--greedy-questions", type=int, default=16, help="questions the greedy arms decode")
    ap.add_argument("--greedy-rows", type=int, default=16, help="sequences at once when greedy "
                    "(conf/eval/default.yaml batch_size)")
    ap.add_argument("--ks", default="4,8", help="k values for the sampling arms")
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup-max-new-tokens", type=int, default=32,
                    help="each arm's untimed warm-up call decodes its full prompt set to this length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-greedy", action="store_true")
    ap.add_argument("--static", action="store_true", help="add engine arms without refilling (static batches)")
    ap.add_argument("--sweep", action="store_true", help="engine only: sampling k=4 at several --rows values")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    tok = load_tokenizer({"source": "embedded"})
    model = load_model({"source": "embedded"}, tok).eval()
    source = build_source({"name": "gsm_symbolic", "n_train": 64, "n_eval": 32})
    questions = [e.question for e in (source.train + source.eval)]
    prompts = [encode_prompt(tok, q) for q in questions[: args.questions]]
    greedy_prompts = [encode_prompt(tok, q) for q in questions[: args.greedy_questions]]
    sample = Sampling(True, 0.8, 0.95, 0)
    greedy = Sampling()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible; "
          f"{len(prompts)} questions, prompt tokens {min(map(len, prompts))}-{max(map(len, prompts))} "
          f"(mean {sum(map(len, prompts)) / len(prompts):.0f}); max_new_tokens {args.max_new_tokens}; "
          f"rows {args.rows} (greedy: {len(greedy_prompts)} questions, rows {args.greedy_rows}); "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)

    arms: list[tuple[str, dict]] = []
    if args.sweep:
        for rows in (8, 16, 32, 64):
            arms.append((f"engine k=4 rows={rows}", dict(engine="engine", k=4, rows=rows, sampling=sample)))
    else:
        for k in map(int, args.ks.split(",")):
            arms.append((f"HF generate k={k}", dict(engine="hf", k=k, rows=args.rows, sampling=sample)))
            arms.append((f"engine k={k}", dict(engine="engine", k=k, rows=args.rows, sampling=sample)))
            if args.static:
                arms.append((f"engine k={k} static", dict(engine="engine", k=k, rows=args.rows, sampling=sample,
                                                          refill=False)))
        if not args.no_greedy:
            g = dict(k=1, rows=args.greedy_rows, sampling=greedy, prompts=greedy_prompts)
            arms.append(("HF generate greedy", dict(engine="hf", **g)))
            arms.append(("engine greedy", dict(engine="engine", **g)))
            if args.static:
                arms.append(("engine greedy static", dict(engine="engine", refill=False, **g)))

    # Warm-up: the first call at a batch shape pays one-off costs (fresh memory pages, kernel selection) no
    # arm should be charged with; a call at the full size costs ~1.4x a repeat of it here, and the next
    # arm's shapes differ, so each arm first runs once at its full size, untimed (--warmup-max-new-tokens).
    for _, kw in arms:
        run_arm(model=model, tok=tok, max_new_tokens=args.warmup_max_new_tokens, seed=10_000,
                **{"prompts": prompts, **kw})
    results: dict[str, list[dict]] = {name: [] for name, _ in arms}
    for rep in range(args.reps):
        for name, kw in arms:
            r = run_arm(model=model, tok=tok, max_new_tokens=args.max_new_tokens, seed=rep, **{"prompts": prompts, **kw})
            results[name].append(r)
            print(f"rep {rep} {name}: {r['s']:.1f} s ({r['cpu']:.1f} s CPU), {r['seqs'] / r['s']:.3f} seq/s, "
                  f"{r['tokens'] / r['s']:.1f} tok/s (load {os.getloadavg()[0]:.1f})", flush=True)

    print("\n| arm | sequences/s | new tokens/s | mean new tokens | seconds per rep |")
    print("|---|---|---|---|---|")
    for name, _ in arms:
        print(fmt_row(name, results[name]))
    print()
    for name, _ in arms:
        if name.startswith("engine") and not args.sweep:
            base = name.replace("engine", "HF generate").replace(" static", "")
            ratios = [e["seqs"] / e["s"] / (h["seqs"] / h["s"]) for e, h in zip(results[name], results[base])]
            cpu = [e["seqs"] / e["cpu"] / (h["seqs"] / h["cpu"]) for e, h in zip(results[name], results[base])]
            print(f"{name} / {base}: {statistics.median(ratios):.2f}x sequences/s "
                  f"(per rep: {', '.join(f'{x:.2f}' for x in ratios)}; per CPU second: "
                  f"{', '.join(f'{x:.2f}' for x in cpu)})")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
