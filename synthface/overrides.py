"""`--set key=value` overrides and readable validation errors, shared by every pydantic settings schema.

`synthface run --set identities.count=100` (the recipe) and `synthface train --set lr=0.05` (the
training settings) parse their overrides here, the same way: the value is a TOML value (`100`,
`0.05`, `true`, `[2, 3]`, `"text"`), and a bare word that is not TOML (`hsface`, `yes`, `NaN`) stays
a string for the schema to judge. `explain` turns a pydantic ValidationError into one sentence per
problem: the field's dotted name, what is wrong, the value given, the field's range and its meaning
(its `description` in the schema); a problem that comes from a `--set` names that `--set` first,
so a typo on the command line is never blamed on the file the settings came from.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Sequence

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from synthface.errors import InvalidInputError

_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
                           "int_type", "int_from_float", "int_parsing", "float_type", "float_parsing", "bool_type",
                           "bool_parsing", "multiple_of"})


def override_key(item: str) -> tuple[str, ...]:
    """The dotted field name of a `key=value` item, as a tuple (("identities", "count"))."""
    return tuple(part.strip() for part in item.split("=", 1)[0].split("."))


def apply_override(data: dict, item: str, *, example: str = "identities.count=100", shape: str = "section.field=value") -> None:
    """Set the field a `key=value` (or `section.field=value`) item names in `data`, the value parsed as TOML."""
    if "=" not in item:
        raise InvalidInputError(f"--set {item!r} must look like {shape}, e.g. --set {example}.")
    key, raw = item.split("=", 1)
    if any(not part.strip() for part in key.split(".")):
        raise InvalidInputError(
            f"--set {item!r} has an empty field name before '='; it must look like {shape}, e.g. --set {example}."
        )
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string
    node = data
    parts = override_key(item)
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InvalidInputError(f"--set {item!r}: {part} is a value, not a section.")
    node[parts[-1]] = value


def explain(exc: ValidationError, schema: type[BaseModel], *, overrides: Sequence[str] = (), what: str = "recipe field",
            listing: str = "`synthface run --help` lists the sections") -> str:
    """One readable sentence per problem: the `--set` it came from (if any), the field's dotted name,
    the message, the value given, then the field's range and meaning from `schema`."""
    parts = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        where = ".".join(loc) or "the settings"
        message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        if error["type"] == "extra_forbidden":
            message = f"is not a {what} (check the spelling; {listing})"
        elif error["type"] == "literal_error":
            message = message.replace("must be", "must be one of", 1)
        given = error.get("input")
        hidden = error["type"] in ("extra_forbidden", "missing", "value_error") or isinstance(given, dict)
        shown = "" if hidden else f" (given: {given!r})"
        sentence = f"{where} {message}{shown}" if loc else message
        info = field_info(schema, error["loc"])
        if info is not None and error["type"] != "extra_forbidden":
            name = ".".join(str(p) for p in error["loc"] if not isinstance(p, int))
            sentence += _range_and_meaning(name, info, numeric=error["type"] in _BOUND_ERRORS)
        origin = next((item for item in reversed(overrides) if _belongs(loc, override_key(item))), None)
        parts.append(f"--set {origin}: {sentence}" if origin is not None else sentence)
    return "; ".join(parts) + "."


def all_from_overrides(exc: ValidationError, overrides: Sequence[str]) -> bool:
    """Whether every problem in `exc` concerns a field some `--set` item names."""
    keys = [override_key(item) for item in overrides]
    return bool(keys) and all(any(_belongs(tuple(map(str, e["loc"])), k) for k in keys) for e in exc.errors())


def _belongs(loc: tuple[str, ...], key: tuple[str, ...]) -> bool:
    """Whether an error at `loc` concerns the field `key` a --set names (or a section on its way)."""
    n = min(len(loc), len(key))
    return n > 0 and loc[:n] == key[:n]


def field_info(schema: type[BaseModel], loc: Sequence) -> FieldInfo | None:
    """The FieldInfo an error location points at (list indices stay on their field), or None."""
    model, info = schema, None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = next((t for t in _members(info.annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return info


def _members(annotation) -> list:
    """The types inside `X | None`, `Annotated[X, ...]`, `tuple[X, ...]`, ... (one level of each)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _range_and_meaning(name: str, info: FieldInfo, *, numeric: bool) -> str:
    """". lr must be a finite number, positive and at most 10: the learning rate" (range only for
    number and switch problems; the meaning whenever the schema has one)."""
    expected = _expectation(info) if numeric else None
    meaning = info.description
    if expected and meaning:
        return f". {name} must be {expected}: {meaning}"
    if expected:
        return f". {name} must be {expected}"
    return f" ({name}: {meaning})" if meaning else ""


def _expectation(info: FieldInfo) -> str | None:
    """"a whole number from 1 to 10000", "a finite number, positive and at most 10", "true or false"."""
    kinds = [m for m in _members(info.annotation) if m is not type(None)]
    base = kinds[0] if len(kinds) == 1 else None
    element = None
    if typing.get_origin(base) is tuple:
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        element = args[0] if args else None
        base = _members(element)[0] if element is not None else None
    metadata = list(info.metadata)
    if element is not None and typing.get_origin(element) is typing.Annotated:
        metadata += list(typing.get_args(element)[1:])
    if base is bool:
        text = "true or false"
    elif base is int:
        text = "a whole number" + _bounds(metadata, whole=True)
    elif base is float:
        finite = any(getattr(m, "allow_inf_nan", True) is False for m in metadata)
        text = _bounds(metadata, whole=False).removeprefix(", ") or ("a finite number" if finite else "a number")
    else:
        return None
    return f"a list of {text.removeprefix('a ').replace('number', 'numbers', 1)}" if element is not None else text


def _bounds(metadata: list, *, whole: bool) -> str:
    """" from 1 to 10000" (whole numbers), ", positive and at most 10" (numbers), plus ", a multiple of N"."""
    low = next(((m.ge, True) for m in metadata if isinstance(m, annotated_types.Ge)), None) or \
        next(((m.gt, False) for m in metadata if isinstance(m, annotated_types.Gt)), None)
    high = next(((m.le, True) for m in metadata if isinstance(m, annotated_types.Le)), None) or \
        next(((m.lt, False) for m in metadata if isinstance(m, annotated_types.Lt)), None)
    step = next((m.multiple_of for m in metadata if isinstance(m, annotated_types.MultipleOf)), None)
    if whole and low and high and low[1] and high[1]:
        words = [f"from {_num(low[0])} to {_num(high[0])}"]
    else:
        words = []
        if low:
            words.append("positive" if low[0] == 0 and not low[1] else
                         f"at least {_num(low[0])}" if low[1] else f"greater than {_num(low[0])}")
        if high:
            words.append(f"at most {_num(high[0])}" if high[1] else f"less than {_num(high[0])}")
    text = ((" " if whole and words[0].startswith("from") else ", ") + " and ".join(words)) if words else ""
    return text + (f", a multiple of {_num(step)}" if step else "")


def _num(value) -> str:
    """10, 0.5, 4,096 or 2**63 - 1 as a person writes it."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int) and value.bit_length() > 40:
        return f"2**{value.bit_length()} - 1" if (value + 1) & value == 0 else str(value)
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)
