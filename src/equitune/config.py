"""Shared pieces of the params schema: strict models, and turning validation errors into readable messages.

Every section of ``params.yaml`` is a pydantic model built on :class:`StrictModel`, so an unknown key (a typo)
is an error, not a silently ignored value. :func:`format_validation_error` names the key, the value and what is
allowed, one line per problem.
"""

from __future__ import annotations

from typing import Any

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


def format_validation_error(error: ValidationError, source: str = "params.yaml") -> str:
    lines = [f"{source}: {error.error_count()} invalid value(s):"]
    for problem in error.errors(include_url=False):
        key = _key(problem["loc"])
        value = problem.get("input")
        if problem["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (typo?); remove it or check the spelling")
        elif problem["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key}: {message} (got {value!r})")
    return "\n".join(lines)
