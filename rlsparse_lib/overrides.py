"""``KEY=VALUE`` assignments: the one parser behind ``rlsparse run -p``, ``rlsparse eval --param``
and config overrides (``train.lr=1e-5``).

Values are YAML (``1`` -> int, ``true`` -> bool, ``null`` -> None, ``[1, 2]`` -> list, ``"1"`` ->
str), with one fix: an unquoted number in exponent notation without a dot (``1e-5``), which YAML
1.1 reads as a string, is a float. :func:`format_value` writes a value back so that
:func:`parse_value` returns it unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable

from rlsparse_lib.errors import ConfigError

#: numbers YAML 1.1 leaves as strings: ``1e-5``, ``-3E+2`` (no dot)
_EXPONENT = re.compile(r"[-+]?\d+[eE][-+]?\d+")


def parse_value(raw: str) -> object:
    """The YAML value of ``raw`` (``1e-5`` read as a float); raises ``ValueError`` if not YAML."""
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).replace("\n", " ")) from exc
    if isinstance(value, str) and _EXPONENT.fullmatch(raw.strip()):
        return float(raw)
    return value


def parse_assignment(
    item: str, *, flag: str = "override", example: str = "KEY=VALUE", identifier: bool = False
) -> tuple[str, object]:
    """``"train.lr=1e-5"`` -> ``("train.lr", 1e-05)``.

    Args:
        flag: how the user passed it, for the error message (``-p``, ``--param``, ``override``).
        example: a valid assignment shown in the error message.
        identifier: the key must be a Python identifier (notebook parameters); otherwise any
            non-empty key without spaces (dotted config keys).

    Raises:
        ConfigError: naming the bad item: no ``=``, a bad key, or a value that is not YAML.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    good_key = key.isidentifier() if identifier else bool(key) and " " not in key
    if not sep or not good_key:
        raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE (e.g. {example})")
    try:
        return key, parse_value(raw)
    except ValueError as exc:
        raise ConfigError(f"{flag} {item!r}: the value is not valid YAML ({exc})") from exc


def parse_assignments(
    items: Iterable[str],
    *,
    flag: str = "override",
    example: str = "KEY=VALUE",
    identifier: bool = False,
) -> dict[str, object]:
    """Several assignments -> ``{key: value}`` (a later one wins); see :func:`parse_assignment`."""
    return dict(
        parse_assignment(i, flag=flag, example=example, identifier=identifier) for i in items
    )


def format_value(value: object) -> str:
    """``value`` as YAML text that :func:`parse_value` reads back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    return json.dumps(value)


def format_assignment(key: str, value: object) -> str:
    """``("train.lr", 1e-05)`` -> ``"train.lr=1e-05"`` (inverse of :func:`parse_assignment`)."""
    return f"{key}={format_value(value)}"
