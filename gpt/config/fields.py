"""Config fields: ``doc()`` declares a field's default, documentation and allowed values; the values
are checked (``check_fields``) and converted from YAML or the command line (``convert``) here."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import field
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from gpt.errors import UserError


def doc(
    default: Any,
    text: str,
    check: str = "",
    architecture: bool | None = None,
    gpt2: Any = None,
    positional: bool = False,
) -> Any:
    """A dataclass field with a default value, its documentation and the rule its values must follow
    (``check``: see ``allowed``), checked by ``validate`` and ``parse_flags``.

    A command's option that is given by position rather than as ``--name VALUE`` is ``positional``
    (required; a list takes one or more values).

    ModelConfig fields also say whether they are part of the ``architecture`` (what the weights compute:
    a checkpoint resumes or loads only into the same values) and, where GPT-2 has one fixed value for it,
    that value (``gpt2``: a model with another value cannot be exported to transformers' GPT2LMHeadModel).
    """
    metadata: dict[str, Any] = {"doc": text, "check": check}
    if architecture is not None:
        metadata["architecture"] = architecture
    if gpt2 is not None:
        metadata["gpt2"] = gpt2
    if positional:
        metadata["positional"] = True
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# Rules for ``doc(..., check=...)``: a comparison (``> 0``, ``>= 0``), an interval with its ends included
# ``[`` or excluded ``(`` (``[0, 1)``), or NON_EMPTY for text. Every float must also be finite.
POSITIVE, NON_NEGATIVE, PROBABILITY, NON_EMPTY = "> 0", ">= 0", "[0, 1)", "non-empty"
SEED = f"[0, {2**32})"  # what numpy's legacy seeding (accelerate's set_seed) accepts


def allowed(value: Any, check: str) -> bool:
    """Whether ``value`` follows the rule ``check`` (see ``doc``); an empty rule allows anything."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if not check:
        return True
    if check == NON_EMPTY:
        return bool(str(value).strip())
    if check.startswith(">="):
        return value >= float(check[2:])
    if check.startswith(">"):
        return value > float(check[1:])
    low, high = (float(end) for end in check[1:-1].split(","))
    above = value >= low if check[0] == "[" else value > low
    below = value <= high if check[-1] == "]" else value < high
    return above and below


def describe(check: str) -> str:
    if check == NON_EMPTY:
        return "non-empty"
    return check if check[0] in "<>" else f"in {check}"


def check_fields(section: Any, prefix: str = "") -> None:
    """Every field of a config section (and its sub-sections) against the rule declared with it."""
    for name, (f, tp) in section_fields(section).items():
        value, key = getattr(section, name), prefix + name
        if is_section(tp):
            check_fields(value, f"{key}.")
        elif not allowed(value, f.metadata.get("check", "")):
            rule = describe(f.metadata["check"])
            if isinstance(value, float) and not math.isfinite(value):
                rule = f"finite and {rule}" if f.metadata["check"] else "finite"
            meaning = re.split(r"[.:;] ", f.metadata["doc"])[0].rstrip(".")  # the doc's first clause
            raise UserError(f"{key_kind(key)} '{key}' must be {rule}, got {value!r} ({meaning})")


def key_kind(key: str) -> str:
    """How an error names a key: a command's ``--flag``, or a key of the training config."""
    return "flag" if key.startswith("--") else "config key"


def is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, UnionType):
        return "|".join(type_name(member) for member in get_args(tp))
    if get_origin(tp) is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list[{get_args(tp)[0].__name__}]"
    return getattr(tp, "__name__", str(tp))


def convert(key: str, value: Any, tp: Any, from_cli: bool) -> Any:
    """Check or convert one value to the field's type, with one clear error when it doesn't fit."""

    def fail(expected: str) -> UserError:
        return UserError(f"{key_kind(key)} '{key}' expects {expected}, got {value!r}")

    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value is False and "no" in choices:  # YAML reads a bare `no` as false
            return "no"
        if str(value).lower() in [str(c) for c in choices]:
            return str(value).lower()
        raise fail("one of " + ", ".join(repr(c) for c in choices))
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise fail("a list")
        return [convert(key, v, item_tp, from_cli) for v in value]
    if origin in (Union, UnionType):  # e.g. int | Literal["auto"]: the first member that takes the value
        for member in get_args(tp):
            try:
                return convert(key, value, member, from_cli)
            except UserError:
                pass
        raise fail(" or ".join("an integer" if m is int else type_name(m).replace("|", ", ") for m in get_args(tp)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise fail("true or false")
    if tp is int:
        if isinstance(value, bool):
            raise fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise fail("an integer")
    if tp is float:
        if isinstance(value, bool):
            raise fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if from_cli:
            return str(value)
        raise fail("a string")
    raise TypeError(f"unsupported config type {tp} for {key}")


def section_fields(section: Any) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = get_type_hints(type(section))
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(section)}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (for YAML, JSON and W&B)."""
    return dataclasses.asdict(cfg)


def flat_dict(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict (``to_dict``'s) as one level of dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flat_dict(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat
