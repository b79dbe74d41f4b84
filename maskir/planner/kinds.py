"""Tile classes: the planner's three-valued answer for a (q tile, kv tile) pair."""

from enum import IntEnum


class TileKind(IntEnum):
    """Class of a (q tile, kv tile) pair: no allowed pair, every pair allowed, or some."""

    EMPTY = 0
    FULL = 1
    PARTIAL = 2


EMPTY, FULL, PARTIAL = int(TileKind.EMPTY), int(TileKind.FULL), int(TileKind.PARTIAL)
"""Plain ints for numpy arrays of kinds (int8)."""
