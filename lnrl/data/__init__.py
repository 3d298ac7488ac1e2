"""Data layer: sources -> records -> tokenization -> collators -> one LightningDataModule.

See docs/data.md for the record schemas and how to add a source or a pairing rule.
"""

from lnrl.data.collate import GroupCollator, PairCollator, SFTCollator
from lnrl.data.datamodule import LnrlDataModule
from lnrl.data.pairs import PAIRING_RULES, Pair, make_pairs, register_pairing
from lnrl.data.records import Completion, DataError, Example, GroupRecord, read_groups, write_groups
from lnrl.data.sources import SOURCES, SourceSplit, build_source, register_source
from lnrl.data.tokenize import encode, encode_prompt

__all__ = [
    "LnrlDataModule",
    "Example",
    "Completion",
    "GroupRecord",
    "DataError",
    "read_groups",
    "write_groups",
    "Pair",
    "make_pairs",
    "PAIRING_RULES",
    "register_pairing",
    "encode",
    "encode_prompt",
    "SFTCollator",
    "PairCollator",
    "GroupCollator",
    "SOURCES",
    "SourceSplit",
    "build_source",
    "register_source",
]
