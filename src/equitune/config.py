"""Shared pieces of the params schema: strict models, and turning validation errors into readable messages.

Every section of ``params.yaml`` is a pydantic model built on :class:`StrictModel`, so an unknown key (a typo)
is an error, not a silently ignored value. :func:`format_validation_error` names the key, the value and what is
allowed, one line per problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ParamsError", "StrictModel", "format_validation_error"]


class ParamsError(ValueError):
    """params.yaml (or a stage's arguments) failed validation; the message lists every problem."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _key(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and (item.startswith(("function-", "literal[", "union[")) or "[" in item):
            continue  # pydantic's names for union branches say nothing to a user
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _step(annotation: Any, item: Any) -> Any:
    """The annotation reached from ``annotation`` by one step of a pydantic error location (None: lost)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(item) if isinstance(item, str) else None
        return field.annotation if field is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]  # the location names a key of the mapping: step into its value type
    if origin in (list, tuple, Sequence) and args and isinstance(item, int):
        return args[0]
    for member in args:  # a union (X | None): pydantic may name the branch; else try each member
        if getattr(member, "__name__", None) == item:
            return member
    for member in args:
        if (found := _step(member, item)) is not None:
            return found
    return None


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``loc`` (to list what is allowed there), if it can be found."""
    annotation: Any = model
    for item in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and item == annotation.__name__:
            continue  # a union branch named after the model we are already in
        annotation = _step(annotation, item)
        if annotation is None:
            return None
    candidates = [annotation, *get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _unknown_key_message(key: str, loc: tuple[Any, ...], value: Any, model: type[BaseModel] | None) -> str:
    holder = _model_at(model, loc[:-1]) if model is not None else None
    message = f"  - {key}: unknown key (got {loc[-1]}: {value!r})"
    if holder is None:
        return message + "; remove it or check the spelling"
    allowed = list(holder.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{message}; allowed keys here: {', '.join(allowed) or '(none)'}{hint}"


def format_validation_error(error: ValidationError, source: str = "params.yaml",
                            model: type[BaseModel] | None = None) -> str:
    """One line per problem: the key, what was wrong, the value given and what is allowed.

    ``model`` (the validated class) lets unknown-key messages list the keys allowed at that place.
    """
    lines = [f"{source}: {error.error_count()} invalid value(s):"]
    for problem in error.errors(include_url=False):
        key = _key(problem["loc"])
        value = problem.get("input")
        if problem["type"] == "extra_forbidden":
            lines.append(_unknown_key_message(key, problem["loc"], value, model))
        elif problem["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key}: {message} (got {value!r})")
    return "\n".join(lines)
