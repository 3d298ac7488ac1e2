"""One LightningDataModule for every method: SFT rows, preference pairs or k-response groups.

    source ─► SourceSplit(train, eval) ─► kind="sft":    gold CoTs of the train split
                                       └► kind="pairs":  make_pairs(read_groups(prefs_path))
                                       └► kind="groups": read_groups(prefs_path)
    eval split ─► val_dataloader (gold CoTs, SFT batches for val NLL) and eval_examples (for generation)

Everything is tokenized once in setup; what was truncated, dropped or skipped is counted in
`dm.stats` and logged, never silent.
"""

from __future__ import annotations

import logging

import lightning as L
from torch.utils.data import DataLoader

from lnrl.data.collate import GroupCollator, PairCollator, SFTCollator
from lnrl.checks import check_number
from lnrl.data.pairs import PAIRING_RULES, Pair, make_pairs
from lnrl.data.records import DataError, Example, GroupRecord, check_file, check_on_error, read_groups
from lnrl.data.resumable import EpochShuffle, ResumableDataLoader
from lnrl.data.sources import SourceSplit, _plain, build_source
from lnrl.data.trl_format import check_prefs_format, detect_format, encode_pref, read_trl_prefs
from lnrl.data.tokenize import OVERLONG, encode_completion, encode_prompt, join

log = logging.getLogger(__name__)

KINDS = ("sft", "pairs", "groups")


class LnrlDataModule(L.LightningDataModule):
    def __init__(self, source: dict, kind: str | None = None, prefs_path: str | None = None, pairing: str = "all",
                 gold_as_chosen: bool = False, weight_field: str | None = None,
                 weight_clip: float | None = None, max_length: int = 512,
                 overlong: str = "truncate", on_error: str = "raise", batch_size: int = 4,
                 eval_batch_size: int = 8, num_workers: int = 0, system_prompt: str | None = None,
                 tokenizer=None, seed: int = 0, path: str | None = None, prefs_format: str = "auto"):
        super().__init__()
        # `data.path=...` is the short form; the shipped configs interpolate it into source.path, which wins.
        if path is not None and not dict(_plain(source)).get("path"):
            source = {**dict(_plain(source)), "path": path}
        if overlong not in OVERLONG:
            raise ValueError(f"data.overlong={overlong!r}; expected one of {OVERLONG}")
        check_on_error(on_error)
        if pairing not in PAIRING_RULES:
            raise ValueError(f"data.pairing={pairing!r}: expected one of {', '.join(PAIRING_RULES)}")
        # Numbers are checked here, naming the key: batch_size=0 would otherwise fail in the DataLoader.
        batch_size = check_number("data.batch_size", batch_size, integer=True, minimum=1)
        eval_batch_size = check_number("data.eval_batch_size", eval_batch_size, integer=True, minimum=1)
        max_length = check_number("data.max_length", max_length, integer=True, minimum=1)
        num_workers = check_number("data.num_workers", num_workers, integer=True, minimum=0)
        seed = check_number("seed", seed, integer=True)
        weight_clip = check_number("data.weight_clip", weight_clip, minimum=1, optional=True)
        if weight_clip is not None and not weight_field:
            raise ValueError(f"data.weight_clip={weight_clip} caps per-pair weights, but data.weight_field is not "
                             f"set (every weight is 1); set data.weight_field or data.weight_clip=null")
        self.source = dict(_plain(source))
        self.kind, self.prefs_path, self.pairing = None, prefs_path, pairing
        self.prefs_format = check_prefs_format(prefs_format)  # auto | lnrl | trl: lnrl/data/trl_format.py
        if kind is not None:  # an explicit kind (Python users, or data.kind=... to assert the method's)
            self.kind = self._checked_kind(kind)
        self.gold_as_chosen, self.weight_field, self.weight_clip = gold_as_chosen, weight_field, weight_clip
        self.max_length, self.overlong, self.on_error = int(max_length), overlong, on_error
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.system_prompt, self.tokenizer, self.seed = system_prompt, tokenizer, seed
        self.split_info: dict = {}
        self.stats: dict = {}
        self._split: SourceSplit | None = None
        self._train: list[dict] = []
        self._val: list[dict] = []
        self.groups: list[GroupRecord] = []
        self.pairs: list[Pair] = []

    # ------------------------------------------------------------------ kind

    def _checked_kind(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"data.kind={kind!r}; expected one of {KINDS}")
        if kind != "sft" and not self.prefs_path:
            raise ValueError(f"data.kind={kind} needs data.prefs_path (a group JSONL written by the sampling stage)")
        return kind

    def use_kind(self, kind: str, method: str) -> None:
        """Serve the batches `method` trains on. The kind's one home is the module class (`data_kind`):
        lnrl-train calls this with it before fit. A kind given explicitly (data.kind=...) must agree."""
        if self._split is not None and self.kind != kind:
            raise RuntimeError(f"LnrlDataModule: set up for kind={self.kind!r}; call use_kind before setup")
        if self.kind is not None and self.kind != kind:
            raise ValueError(f"data.kind={self.kind!r} conflicts with method {method}, which trains on {kind!r} "
                             f"batches; drop data.kind (the method decides it) or pick a method for "
                             f"{self.kind!r} batches")
        self.kind = self._checked_kind(kind)

    def check_files(self) -> None:
        """The preference file a kind needs exists and is not empty: checked before a model is loaded (and
        by a sweep before its points are launched), with a DataError naming it."""
        if self.kind in (None, "sft") or not self.prefs_path:
            return
        if detect_format(self.prefs_path, self.prefs_format) == "lnrl":  # not a hub dataset
            check_file(self.prefs_path, "data.prefs_path, the group file")

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        if self._split is not None:  # idempotent: Lightning calls setup once per stage
            return
        if self.tokenizer is None:
            raise RuntimeError("LnrlDataModule.setup: no tokenizer; set dm.tokenizer = tok before setup")
        if self.kind is None:  # no method chose (lnrl-eval, sampling): the gold CoTs of the source
            self.kind = "sft"
        self.check_files()
        split = build_source(self.source, on_error=self.on_error)
        stats: dict = {"source_skipped": split.info.get("skipped", 0)}
        self._val = self._encode_examples(split.eval, stats, "val")
        if self.kind == "sft":
            self._train = self._encode_examples(split.train, stats, "train")
        elif detect_format(self.prefs_path, self.prefs_format) == "trl":
            self._train = self._encode_trl(split.eval, stats)
        else:
            gstats: dict = {}
            self.groups = read_groups(self.prefs_path, self.on_error, gstats)
            if not self.groups:
                why = (f"all {gstats['skipped']} lines were bad and skipped (on_error=skip)" if gstats["skipped"]
                       else "the file holds no records")
                raise DataError(f"{self.prefs_path}: no groups to train on: {why} (data.prefs_path: a group file "
                                f"written by lnrl-sample)")
            stats["prefs_skipped"] = gstats["skipped"]
            stats["groups_read"] = len(self.groups)
            self._check_leakage(split.eval, stats)
            if self.kind == "pairs":
                pstats: dict = {}
                try:
                    self.pairs = make_pairs(self.groups, self.pairing, self.gold_as_chosen, self.weight_field, pstats,
                                            weight_clip=self.weight_clip)
                except DataError as e:  # a whole-file fault (every weight 0) names no line: name the file
                    if str(self.prefs_path) in str(e):
                        raise
                    raise DataError(f"{self.prefs_path}: {e}") from None
                stats.update(pstats)
                self._train = self._encode_pairs(self.pairs, stats)
            else:
                self._train = self._encode_groups(self.groups, stats)
        if not self._train:
            what = self.prefs_path if self.kind != "sft" else self.source.get("path") or self.source.get("name")
            raise DataError(f"{what}: no training rows after tokenization (kind={self.kind}, stats={stats})")
        stats["train_rows"], stats["val_rows"] = len(self._train), len(self._val)
        self._split, self.split_info, self.stats = split, dict(split.info), stats
        log.info("data (%s, %s): %s", self.source.get("name"), self.kind, stats)
        dropped = {k: v for k, v in stats.items() if v and ("dropped" in k or "skipped" in k or "truncated" in k
                                                            or "too_long" in k or "mismatch" in k)}
        if dropped:
            log.warning("data: rows truncated, dropped or skipped: %s", dropped)

    def _prompt(self, question: str, cache: dict) -> list[int]:
        if question not in cache:
            cache[question] = encode_prompt(self.tokenizer, question, self.system_prompt)
        return cache[question]

    def _row(self, prompt: list[int], text: str, stats: dict, split: str, eos: bool = True) -> dict | None:
        """One tokenized row; eos=False for a sampled completion cut at the token limit (no end-of-turn)."""
        s: dict = {}
        row = join(prompt, encode_completion(self.tokenizer, text, eos), self.max_length, self.overlong, s)
        for k, v in s.items():
            stats[f"{split}_{k}"] = stats.get(f"{split}_{k}", 0) + v
        return row

    def _encode_examples(self, examples: list[Example], stats: dict, split: str) -> list[dict]:
        cache: dict = {}
        rows = [self._row(self._prompt(e.question, cache), e.solution, stats, split) for e in examples]
        return [r for r in rows if r is not None]

    def _ref_ok(self, ref: tuple[float, int] | None, row: dict, what: str, stats: dict) -> bool:
        """A cached reference score must cover the same tokens the policy is scored on."""
        n = sum(row["completion_mask"])
        if ref is None or ref[1] == n:
            return True
        if self.on_error == "raise":
            raise DataError(f"{self.prefs_path}: {what}: field 'ref.n_tokens': cached {ref[1]} tokens but the "
                            f"completion encodes to {n} (max_length={self.max_length}); recompute the reference "
                            f"scores with this tokenizer and max_length, or set on_error=skip")
        stats["ref_mismatch_dropped"] = stats.get("ref_mismatch_dropped", 0) + 1
        return False

    def _encode_pairs(self, pairs: list[Pair], stats: dict) -> list[dict]:
        cache: dict = {}
        out = []
        for p in pairs:
            prompt = self._prompt(p.question, cache)
            chosen = self._row(prompt, p.chosen, stats, "train", eos=not p.chosen_truncated)
            rejected = self._row(prompt, p.rejected, stats, "train", eos=not p.rejected_truncated)
            if chosen is None or rejected is None:
                stats["pairs_dropped"] = stats.get("pairs_dropped", 0) + 1
                continue
            if not (self._ref_ok(p.ref_chosen, chosen, f"pair {p.id} chosen", stats)
                    and self._ref_ok(p.ref_rejected, rejected, f"pair {p.id} rejected", stats)):
                continue
            out.append({"chosen": chosen, "rejected": rejected, "ref_chosen": p.ref_chosen,
                        "ref_rejected": p.ref_rejected, "weight": p.weight})
        return out

    def _encode_groups(self, groups: list[GroupRecord], stats: dict) -> list[dict]:
        """One item per group: its sampled members and its gold CoT row (for an NLL term). With
        gold_as_chosen, a group whose samples are all incorrect gets its gold CoT as a positive member
        (rank 1, ref = gold_ref), counted in stats["groups_gold_positive"]."""
        out = []
        stats["groups_all_correct"] = sum(bool(g.completions) and g.n_correct == len(g.completions) for g in groups)
        stats["groups_all_incorrect"] = sum(g.n_correct == 0 for g in groups)
        stats["groups_gold_positive"] = 0
        for g in groups:
            prompt = self._prompt(g.question, {})
            gold = self._row(prompt, g.gold_solution, stats, "train")
            item: dict = {"members": [], "is_positive": [], "ranks": [], "refs": [], "gold": gold}
            members = [(f"completions[{i}]", c.text, c.correct, c.rank, c.ref, bool(c.truncated))
                       for i, c in enumerate(g.completions)]
            if self.gold_as_chosen and g.completions and g.n_correct == 0:
                members.append(("gold_solution", g.gold_solution, True, 1, g.gold_ref, False))
                stats["groups_gold_positive"] += 1
            for where, text, correct, rank, ref, truncated in members:
                row = self._row(prompt, text, stats, "train", eos=not truncated)
                if row is None or not self._ref_ok(ref, row, f"group {g.id} {where}", stats):
                    stats["members_dropped"] = stats.get("members_dropped", 0) + 1
                    continue
                item["members"].append(row)
                item["is_positive"].append(correct)
                item["ranks"].append(rank)
                item["refs"].append(ref)
            if gold is None or not item["members"]:
                stats["groups_dropped"] = stats.get("groups_dropped", 0) + 1
                continue
            out.append(item)
        return out

    def _encode_trl(self, held: list[Example], stats: dict) -> list[dict]:
        """Outside preference data in TRL's formats (lnrl/data/trl_format.py): one pair per row, tokenized
        like lnrl's own rows; weights from data.weight_field, cached refs from ref_chosen / ref_rejected."""
        if self.kind != "pairs":
            raise DataError(f"{self.prefs_path}: TRL preference rows (prompt/chosen/rejected) make pairs, but the "
                            f"method trains on {self.kind!r}; use a pairwise method (dpo, dpo_avg, ipo, simpo, rpo, "
                            f"wdpo), or an lnrl group file for aft / kto")
        if self.pairing != "all":
            log.info("data.pairing=%s ignored: each row of %s is one pair", self.pairing, self.prefs_path)
        rstats: dict = {}
        self.prefs = read_trl_prefs(self.prefs_path, self.on_error, rstats, self.weight_field, self.weight_clip)
        if not self.prefs:
            why = f"all {rstats['skipped']} rows were bad and skipped (on_error=skip)" if rstats["skipped"] else "no rows"
            raise DataError(f"{self.prefs_path}: no preference pairs to train on: {why}")
        stats.update(prefs_skipped=rstats["skipped"], prefs_forms=rstats["prefs_forms"], pairs=len(self.prefs))
        held_q = {e.question for e in held}
        stats["prefs_in_eval"] = sum(r.question in held_q for r in self.prefs)
        if stats["prefs_in_eval"]:
            log.warning("data: %d prompt(s) of %s are also held-out questions", stats["prefs_in_eval"], self.prefs_path)
        out = []
        for r in self.prefs:
            s: dict = {}
            chosen, rejected = encode_pref(self.tokenizer, r, self.max_length, self.system_prompt, self.overlong, s)
            for k, v in s.items():
                stats[f"train_{k}"] = stats.get(f"train_{k}", 0) + v
            if chosen is None or rejected is None:
                stats["pairs_dropped"] = stats.get("pairs_dropped", 0) + 1
                continue
            if not (self._ref_ok(r.ref_chosen, chosen, f"{r.id} (ref_chosen)", stats)
                    and self._ref_ok(r.ref_rejected, rejected, f"{r.id} (ref_rejected)", stats)):
                continue
            out.append({"chosen": chosen, "rejected": rejected, "ref_chosen": r.ref_chosen,
                        "ref_rejected": r.ref_rejected, "weight": r.weight})
        return out

    def _check_leakage(self, held: list[Example], stats: dict) -> None:
        """Preference questions that are also held-out questions would inflate evaluation."""
        held_q = {e.question for e in held}
        n = sum(g.question in held_q for g in self.groups)
        stats["prefs_in_eval"] = n
        if n:
            log.warning("data: %d question(s) of %s are also in the held-out split", n, self.prefs_path)

    # ------------------------------------------------------------------ loaders

    def _require_setup(self) -> SourceSplit:
        if self._split is None:
            raise RuntimeError("LnrlDataModule: call setup() first")
        return self._split

    @property
    def train_examples(self) -> list[Example]:
        return self._require_setup().train

    @property
    def eval_examples(self) -> list[Example]:
        return self._require_setup().eval

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def collator(self):
        return {"sft": SFTCollator, "pairs": PairCollator, "groups": GroupCollator}[self.kind](self.pad_id)

    def train_dataloader(self) -> DataLoader:
        """Order = permutation(seed, epoch); resuming mid-epoch skips the batches already trained on."""
        self._require_setup()
        return ResumableDataLoader(self._train, batch_size=self.batch_size,
                                   sampler=EpochShuffle(len(self._train), self.seed), collate_fn=self.collator(),
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                   progress=self._progress)

    def _progress(self) -> tuple[int, int]:
        """(epoch, batches trained in it) when a checkpoint is written. `processed` includes the batch
        whose on_train_batch_end is saving the checkpoint, so the resumed run starts right after it."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return trainer.current_epoch, done

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        if not self._val:  # no held-out split: Lightning skips validation for an empty list
            return []
        return DataLoader(self._val, batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=SFTCollator(self.pad_id), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
