"""Config values checked where they are read: the error names the config key, the value given and what
the key accepts (`data.batch_size=0: expected an integer >= 1`), not a TypeError from deep inside
torch or a division by zero three layers down."""

from __future__ import annotations

import math
from typing import Any


def is_number(value: Any) -> bool:
    """A finite int or float. A bool is not one: `true` where a number belongs is a slip, not a 1."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_number(key: str, value: Any, *, integer: bool = False, minimum: float | None = None,
                 above: float | None = None, optional: bool = False) -> Any:
    """`value` (an int when integer=True), or ValueError "<key>=<value>: expected <what it accepts>".

    minimum: the value must be >= it; above: the value must be > it; optional: None is accepted too."""
    if value is None and optional:
        return None
    ok = is_number(value) and (not integer or float(value).is_integer()) \
        and (minimum is None or value >= minimum) and (above is None or value > above)
    if not ok:
        what = "an integer" if integer else "a finite number"
        if minimum is not None:
            what += f" >= {minimum:g}"
        if above is not None:
            what += f" > {above:g}"
        raise ValueError(f"{key}={value!r}: expected {'null or ' if optional else ''}{what}")
    return int(value) if integer else value
