"""Shared pieces of the params schema: strict models, readable validation errors, and loading one section.

Every section of ``params.yaml`` is a pydantic model built on :class:`StrictModel`, so an unknown key (a typo)
is an error, not a silently ignored value. :func:`format_validation_error` names the key, the value and what is
allowed, one line per problem.

A stage reads only what it needs: :func:`load_section` validates ``profile``, ``base`` and one experiment's
section with that experiment's model (so a SCAN stage never imports the image experiment's code). The schema of
the whole file, which composes every section, is :mod:`equitune.params`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from ..core.errors import ConfigError
from .reproducibility import CpuIsa

__all__ = ["BaseParams", "PROFILE_PATTERN", "ParamsError", "SectionParams", "StrictModel", "UniqueList",
           "format_validation_error", "load_section", "read_params_file", "unique_values"]


class ParamsError(ConfigError):
    """params.yaml (or a stage's arguments) failed validation; the message lists every problem."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


_Item = TypeVar("_Item")


def unique_values(values: list[_Item]) -> list[_Item]:
    """The one check of every list of names or seeds in params: no value twice (the value named in the error)."""
    seen: set = set()
    repeated = [v for v in values if v in seen or seen.add(v)]
    if repeated:
        raise ValueError(f"lists {sorted(set(map(str, repeated)))} more than once; every value must be unique")
    return values


UniqueList = Annotated[list[_Item], AfterValidator(unique_values)]
"""``UniqueList[Literal["a", "b"]]``: a list of allowed values (the Literal names them in the error) without
repeats. Add ``Field(min_length=1)`` where an empty list makes no sense."""


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


PROFILE_PATTERN = r"^[a-z][a-z0-9_-]*$"
"""A profile's name (``default``, ``paper``, ...): it names the report and the MLflow runs it made."""


class BaseParams(StrictModel):
    """Settings shared by every stage."""

    threads: int = Field(2, ge=1, description="torch intra-op threads (fixed, for reproducible CPU results)")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    deterministic: bool = True
    cpu_isa: CpuIsa = Field(
        "avx2", description="instruction set of torch's CPU kernels (ATen, oneDNN, MKL), pinned before a stage starts "
                            "so that CPUs with wider vector units give the same digits; see pipeline/reproducibility.py")


class _Header(StrictModel):
    profile: str = Field(pattern=PROFILE_PATTERN)
    base: BaseParams = BaseParams()


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The params file as a mapping of sections; a clear :class:`ParamsError` when it is missing or not YAML."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found (run from the repository root, or pass the params file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__} ({str(data)[:60]!r})"
        raise ParamsError(f"{path}: expected a mapping of sections at the top level (profile, base, ...); got {got}")
    return data


Section = TypeVar("Section", bound=BaseModel)


@dataclass(frozen=True)
class SectionParams(Generic[Section]):
    """What one stage reads: the profile's name, the shared ``base`` settings and its experiment's section."""

    profile: str
    base: BaseParams
    section: Section


def load_section(path: str | Path, name: str | None, model: type[Section] | None) -> SectionParams[Section]:
    """Validate ``profile``, ``base`` and section ``name`` of the params file with ``model`` (``None``, ``None``:
    only ``profile`` and ``base``, for stages that read no experiment's section).

    Every problem in those is reported at once (key, value, what is allowed); other sections are not read.
    """
    data = read_params_file(path)
    fields = {} if name is None else {name: (model, ...)}
    schema = create_model(f"Params_{name or 'base'}", __base__=_Header, **fields)
    try:
        validated = schema.model_validate({k: data[k] for k in ("profile", "base", name) if k in data})
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, str(path), schema)) from None
    return SectionParams(validated.profile, validated.base, None if name is None else getattr(validated, name))
