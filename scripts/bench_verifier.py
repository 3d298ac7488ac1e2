"""Throughput of MathVerifier.profile_batch on a realistic mix of solutions, on one core.

The mix: gold solutions (GSM8K train from ../shared/data/gsm8k/train.jsonl when present, else
reasoning-gym gsm_symbolic) and four corruptions of each — wrong arithmetic (one calculator
result off), wrong final answer, truncated at 60% (flagged), looping (a line repeated, no final
answer) — so every code path of the profile is timed. For scale it also times a peer on the
same items: math-verify's parse + verify of the extracted answer against the reference (what a
verifier that only grades answers costs).

    python scripts/bench_verifier.py                 # prints solutions/s and the ratio to the peer
    python scripts/bench_verifier.py --check         # exit 1 below 2,000 solutions/s

Rates are solutions per CPU-second of this process (time.process_time), best of --repeats runs,
so a machine shared with other jobs does not halve the figure; wall-clock rates are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lnrl.verify import DIMENSIONS, SCORES, MathVerifier, extract_answer  # noqa: E402

GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
TARGET_PER_S = 2000.0
_ANNOT_RE = re.compile(r"<<([^<>=]+)=([^<>]+)>>(\d+(?:\.\d+)?)")


def load_gold(n: int, seed: int) -> tuple[list[dict], str]:
    if GSM8K_TRAIN.exists():
        rows = []
        with GSM8K_TRAIN.open() as f:
            for line in f:
                d = json.loads(line)
                ref = d["answer"].split("####")[-1].strip().replace(",", "")
                rows.append({"question": d["question"], "solution": d["answer"], "reference_answer": ref})
                if len(rows) >= n:
                    break
        return rows, f"GSM8K train ({GSM8K_TRAIN})"
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=seed)
    rows = [
        {"question": x["question"], "solution": x["metadata"]["answer_cot"], "reference_answer": x["answer"]}
        for x in ds
    ]
    return rows, "reasoning-gym gsm_symbolic"


def corrupt(gold: dict, rng: random.Random) -> list[tuple[str, dict]]:
    """Four corrupted variants of a gold solution, each tagged with its kind."""
    sol, ref = gold["solution"], gold["reference_answer"]
    out = []
    # wrong arithmetic: one calculator result (and the number echoing it) off by 1..9
    m = list(_ANNOT_RE.finditer(sol))
    if m:
        a = rng.choice(m)
        bad = str(int(float(a.group(3))) + rng.randint(1, 9))
        wrong = sol[: a.start()] + f"<<{a.group(1)}={bad}>>{bad}" + sol[a.end() :]
    else:  # inline style: bump the first "= N"
        wrong = re.sub(r"= (\d+)", lambda mm: f"= {int(mm.group(1)) + rng.randint(1, 9)}", sol, count=1)
    out.append(("wrong_arithmetic", dict(gold, solution=wrong)))
    # wrong final answer
    try:
        bad_final = str(int(float(ref)) * rng.choice([2, 10]) + rng.randint(1, 5))
    except ValueError:
        bad_final = "7"
    out.append(("wrong_final", dict(gold, solution=sol.rsplit("####", 1)[0] + "#### " + bad_final)))
    # truncated mid-solution
    out.append(("truncated", dict(gold, solution=sol[: int(len(sol) * 0.6)], truncated=True)))
    # looping: the first line over and over, never finishing
    first = sol.split("\n", 1)[0]
    out.append(("looping", dict(gold, solution="\n".join([first] * 25))))
    return out


def build_mix(n_gold: int, seed: int) -> tuple[list[dict], list[str], str]:
    rng = random.Random(seed)
    gold, source = load_gold(n_gold, seed)
    items, kinds = [], []
    for g in gold:
        items.append(g)
        kinds.append("gold")
        for kind, item in corrupt(g, rng):
            items.append(item)
            kinds.append(kind)
    return items, kinds, source


def time_it(fn, repeats: int) -> tuple[float, float]:
    """Best (CPU seconds, wall seconds) over repeats."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return best_cpu, best_wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-gold", type=int, default=1000, help="gold solutions (x5 with corruptions)")
    ap.add_argument("--n-peer", type=int, default=300, help="items timed for the math-verify peer")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET_PER_S:.0f} solutions/s")
    args = ap.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):  # one core, as the requirement states
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        except OSError:
            pass

    items, kinds, source = build_mix(args.n_gold, args.seed)
    verifier = MathVerifier()
    verifier.profile_batch(items[:50])  # warm regex caches and imports

    profiles: list = []
    cpu, wall = time_it(lambda: profiles.__setitem__(slice(None), verifier.profile_batch(items)), args.repeats)
    rate_cpu, rate_wall = len(items) / cpu, len(items) / wall

    # Peer: math-verify grading the extracted answer (parse both sides, verify).
    from math_verify import parse, verify

    peer_items = items[: args.n_peer]
    preds = [extract_answer(it["solution"]) or "" for it in peer_items]

    def peer() -> None:
        for it, p in zip(peer_items, preds):
            verify(parse(f"${it['reference_answer']}$"), parse(f"${p}$"))

    peer()  # warm sympy
    pcpu, pwall = time_it(peer, args.repeats)
    peer_rate = len(peer_items) / pcpu

    print(f"data: {source}; {len(items)} solutions ({len(items) // 5} gold + 4 corruptions each)")
    print(f"MathVerifier.profile_batch: {rate_cpu:,.0f} solutions/s per CPU-second "
          f"({rate_wall:,.0f}/s wall clock), one core, best of {args.repeats}")
    print(f"peer math-verify parse+verify: {peer_rate:,.0f} answers/s per CPU-second "
          f"({len(peer_items) / pwall:,.0f}/s wall clock)")
    print(f"ratio profile / peer: {rate_cpu / peer_rate:.1f}x")

    # Sanity: mean of each dimension by kind (gold should be near 0; each corruption lights up
    # its own dimensions).
    cols = list(DIMENSIONS) + list(SCORES)
    print("\nmean by kind:".ljust(20) + "".join(f"{c[:10]:>11}" for c in cols))
    for kind in ["gold", "wrong_arithmetic", "wrong_final", "truncated", "looping"]:
        ps = [p for p, k in zip(profiles, kinds) if k == kind]
        means = [sum(getattr(p, c) for p in ps) / len(ps) for c in cols]
        print(f"{kind:<19}" + "".join(f"{m:>11.3f}" for m in means))

    if args.check and rate_cpu < TARGET_PER_S:
        print(f"FAIL: {rate_cpu:,.0f} < {TARGET_PER_S:,.0f} solutions/s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
