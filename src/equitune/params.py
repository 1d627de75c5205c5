"""The schema of the whole params file, and profiles composed as overlays.

``params.yaml`` is the default profile. Another profile is an *overlay*: a YAML file holding only the keys that
differ (``profiles/paper.yaml``). :func:`compose` merges overlays onto a base, mapping by mapping (a list or a
value replaces the base's), and :func:`validate` checks the result against :class:`Params`, which composes the
schema of every section (the stages themselves each validate only their own section, see
:func:`equitune.pipeline.schema.load_section`).

Command line::

    python -m equitune.params check [params.yaml]                          # validate the whole file
    python -m equitune.params compose profiles/paper.yaml [-o params.yaml]  # base params.yaml + overlays
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from .core.errors import EquituneError
from .images.config import ImagesParams
from .nlg.config import NlgParams
from .pipeline.io import write_text
from .pipeline.schema import (
    PROFILE_PATTERN,
    BaseParams,
    ParamsError,
    StrictModel,
    format_validation_error,
    read_params_file,
)
from .scan.config import ScanParams

__all__ = ["Params", "compose", "load_params", "main", "validate"]


class Params(StrictModel):
    profile: str = Field(pattern=PROFILE_PATTERN)
    base: BaseParams = BaseParams()
    scan: ScanParams
    images: ImagesParams
    nlg: NlgParams


def validate(data: Mapping[str, Any], source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, source, Params)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    return validate(read_params_file(path), str(path))


def compose(base: Mapping[str, Any], *overlays: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each overlay merged on top: mappings merge key by key, anything else replaces."""
    result = copy.deepcopy(dict(base))
    for overlay in overlays:
        result = _merge(result, overlay)
    return result


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _compose_files(base: Path, overlays: Sequence[Path]) -> tuple[dict[str, Any], str]:
    data = compose(read_params_file(base), *(read_params_file(p) for p in overlays))
    source = " + ".join(str(p) for p in (base, *overlays))
    validate(data, source)
    return data, source


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m equitune.params", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a whole params file")
    check.add_argument("file", nargs="?", default="params.yaml", type=Path)
    composer = commands.add_parser("compose", help="merge overlays onto a base params file, validate, write")
    composer.add_argument("overlays", nargs="+", type=Path, help="overlay files, applied in order")
    composer.add_argument("--base", default=Path("params.yaml"), type=Path, help="base file (default: params.yaml)")
    composer.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            params = load_params(args.file)
            print(f"{args.file}: valid ({params.profile} profile)")
            return 0
        data, source = _compose_files(args.base, args.overlays)
        header = (f"# Composed by `python -m equitune.params compose` from {source}.\n"
                  "# To return to the default profile: git checkout params.yaml\n")
        text = header + yaml.safe_dump(data, sort_keys=False, width=120)
        if args.output is None:
            sys.stdout.write(text)
        else:
            write_text(args.output, text)
            print(f"wrote {args.output} ({data.get('profile')} profile) from {source}", file=sys.stderr)
        return 0
    except EquituneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
