"""The shared `Registry`: one name per entry, unknown names listed in the error."""

from __future__ import annotations

import pytest

from randsparse.errors import UnknownNameError
from randsparse.registry import Registry


def test_entries_are_found_by_name_and_listed_sorted() -> None:
    things: Registry[int] = Registry("thing")
    things.add("b", 2)
    things.decorator("a")(1)
    assert things["a"] == 1 and things["b"] == 2
    assert things.names() == ["a", "b"]
    assert "a" in things and "c" not in things


def test_a_name_is_taken_once() -> None:
    things: Registry[int] = Registry("thing")
    things.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        things.add("a", 2)


def test_unknown_name_lists_the_known_ones() -> None:
    things: Registry[int] = Registry("thing")
    things.add("alpha", 1)
    with pytest.raises(UnknownNameError, match="unknown thing 'beta'; known: alpha"):
        things["beta"]


def test_copy_is_independent() -> None:
    things: Registry[int] = Registry("thing")
    things.add("a", 1)
    twin = things.copy()
    twin.add("b", 2)
    assert things.names() == ["a"] and twin.names() == ["a", "b"]
