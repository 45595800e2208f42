"""Command-line flags generated from a dataclass's fields, the one boolean parser the
command line, the environment and ``--set`` share, and the one check of a number parsed from
JSON that the JSON front ends (``vaegan batch``, the playground) share."""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields
from typing import Any

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")


def finite_number(v: Any) -> bool:
    """A value parsed from JSON that is a finite number a float can hold (booleans, which
    Python counts as integers, are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an integer beyond any float
        return False


def add_fields(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per plain field of ``cls``: ``--field-name`` (or metadata ``flag``), its type,
    default and help from the field. Nested dataclasses get their own call."""
    for f in fields(cls):
        help_text = f.metadata.get("help")
        if not help_text:  # a nested options object: the caller adds its fields
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not MISSING else f.default_factory()
        kind = str(f.type)
        kw: dict[str, Any] = {"dest": f.name, "help": help_text}
        if kind == "bool":
            if default:
                raise TypeError(f"{cls.__name__}.{f.name}: a flag can only switch a bool on")
            p.add_argument(flag, action="store_true", **kw)
            continue
        if kind.startswith("tuple["):
            kw.update(nargs="+", type=int, default=list(default), metavar="N")
            shown = " ".join(map(str, default))
        else:
            kw.update(type=int if kind == "int" else float if kind == "float" else str)
            kw["default"] = default
            if kind == "int":
                kw["metavar"] = "N"
            shown = "unset" if default is None else str(default)
        for key in ("choices", "metavar"):
            if key in f.metadata:
                kw[key] = f.metadata[key]
        kw["help"] = f"{help_text} (default {shown})"
        p.add_argument(flag, **kw)


def values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed values of ``cls``'s plain fields, ready for ``cls(**values, ...)``."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("help"):
            v = getattr(args, f.name)
            out[f.name] = tuple(v) if isinstance(v, list) else v
    return out
