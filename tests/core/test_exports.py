"""The names `equitune.core` exports: the literal ``__all__`` (what ruff, griffe and editors read) is the lazily
loaded map, name for name, and each name is the object its submodule defines."""

from __future__ import annotations

import importlib

import equitune.core as core


def test_all_lists_exactly_the_lazily_loaded_names():
    assert sorted(core.__all__) == sorted(core._SUBMODULE)
    assert len(set(core.__all__)) == len(core.__all__)


def test_each_exported_name_is_its_submodules_object():
    for name, submodule in core._SUBMODULE.items():
        assert getattr(core, name) is getattr(importlib.import_module(f"equitune.core.{submodule}"), name), name


def test_an_unknown_name_is_an_attribute_error_naming_it():
    try:
        core.NoSuchName  # noqa: B018 - the lookup is the test
    except AttributeError as error:
        assert "NoSuchName" in str(error)
    else:
        raise AssertionError("equitune.core.NoSuchName did not raise")
