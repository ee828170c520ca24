"""The order in which QEMU lists the children of a QOM container (``query-chardev``).

QEMU 7.2's ``qmp_query_chardev`` walks ``/chardevs`` with ``object_child_foreach``, which
iterates the object's property table (a GLib ``GHashTable`` keyed by ``g_str_hash``) in
bucket order, and prepends each chardev to the result: so QEMU lists its chardevs in the
reverse bucket order of a hash table filled in creation order. This module replays GLib's
open-addressing table (GLib 2.74, Debian 12: 8 buckets to start, index ``hash * 11 % prime``,
quadratic probing, growth and in-place rehash as ``g_hash_table_maybe_resize``) for the
labels, which reproduces QEMU's answers (checked against QEMU 7.2 with 6, 13 and 31 chardevs).
"""
from __future__ import annotations

from typing import Iterable

#: GLib's prime_mod: the modulus for a table of 1 << shift buckets
_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
              262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689,
              268435399, 536870909, 1073741789, 2147483647)
_MIN_SHIFT = 3
_UNUSED, _TOMBSTONE = 0, 1


def g_str_hash(text: str) -> int:
    """GLib's djb2 string hash (h = h * 33 + byte, from 5381), 32 bits."""
    h = 5381
    for byte in text.encode():
        h = (h * 33 + byte) & 0xFFFFFFFF
    return h


class _Table:
    """The bucket layout of a GHashTable that is only ever inserted into."""

    def __init__(self) -> None:
        self._set_shift(_MIN_SHIFT)
        self.hashes = [_UNUSED] * self.size
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = self.noccupied = 0

    def _set_shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _index(self, h: int) -> int:
        return ((h * 11) & 0xFFFFFFFF) % self.mod

    def insert(self, key: str) -> None:
        h = g_str_hash(key)
        if h <= _TOMBSTONE:  # 0 and 1 mark free buckets: GLib uses 2 instead
            h = 2
        i, step = self._index(h), 0
        while self.hashes[i] != _UNUSED:
            if self.hashes[i] == h and self.keys[i] == key:
                return
            step += 1
            i = (i + step) & self.mask
        self.hashes[i], self.keys[i] = h, key
        self.nnodes += 1
        self.noccupied += 1
        if (self.size > self.nnodes * 4 and self.size > 1 << _MIN_SHIFT) or \
                self.size <= self.noccupied + self.noccupied // 16:
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        n, shift = int(self.nnodes * 1.333), 0
        while n:
            n >>= 1
            shift += 1
        self._set_shift(max(shift, _MIN_SHIFT))
        if self.size > old_size:
            self.hashes += [_UNUSED] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        placed = [False] * max(self.size, old_size)
        for i in range(old_size):  # GLib's in-place rehash: evict, place, carry what was there
            h = self.hashes[i]
            if h <= _TOMBSTONE:
                self.hashes[i] = _UNUSED
                continue
            if placed[i]:
                continue
            self.hashes[i], key, self.keys[i] = _UNUSED, self.keys[i], None
            while True:
                j, step = self._index(h), 0
                while placed[j]:
                    step += 1
                    j = (j + step) & self.mask
                placed[j] = True
                there = self.hashes[j]
                self.hashes[j] = h
                if there <= _TOMBSTONE:
                    self.keys[j] = key
                    break
                h = there
                key, self.keys[j] = self.keys[j], key
        del self.hashes[self.size:], self.keys[self.size:]
        self.noccupied = self.nnodes


def qom_children_order(created: Iterable[str]) -> list[str]:
    """The labels, given in creation order, in the order QEMU's ``query-chardev`` lists them."""
    table = _Table()
    for label in created:
        table.insert(label)
    return [k for k in reversed(table.keys) if k is not None]
