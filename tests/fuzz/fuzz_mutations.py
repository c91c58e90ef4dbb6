"""The mutation engine of the fuzz harness: seeded, byte-level and MessagePack-structure-aware.

A :class:`Mutator` turns valid seeds (built with the protocol's own functions, in
``fuzz_targets.py``) into hostile inputs. Everything it does is drawn from the ``random.Random``
it is given, so an input is reproduced exactly from the harness seed, the target name and the
batch number.

Byte-level operations: bit flips, byte overwrites with boundary values, truncation, extension,
deletion, duplication and insertion of ranges, splices of two seeds, and boundary integers
written at random offsets.

Structure-aware operations parse the input as MessagePack (the ``msgpack`` library, lenient), pick
one node of the tree and: give it a wrong type, nest it thousands of levels deep, declare a huge
length with nothing behind it, make it a string of invalid UTF-8, blow it up past the size
limits, drop, duplicate, swap or add array elements, set an integer to a boundary value, or —
when the node is ``bin`` holding MessagePack itself (an envelope's header, a signed document) —
mutate *inside* it and re-wrap it, so the outer framing stays valid and the inner decoder is
reached. Nodes that plain MessagePack cannot express (raw headers, invalid UTF-8) are encoded as
unique placeholders and spliced in after packing.

Invariant: :meth:`Mutator.mutate` never raises and always returns ``bytes``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

BOUNDARY_INTS: Final = (
    0,
    1,
    -1,
    127,
    128,
    255,
    256,
    2**15,
    2**16 - 1,
    2**16,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**64 - 1,
    -(2**7),
    -(2**31),
    -(2**63),
)
INTERESTING_BYTES: Final = (
    0x00,
    0x01,
    0x7F,
    0x80,
    0x90,
    0x9F,
    0xA0,
    0xC0,
    0xC1,
    0xC2,
    0xC4,
    0xC6,
    0xCA,
    0xCB,
    0xCF,
    0xD3,
    0xD4,
    0xD9,
    0xDB,
    0xDC,
    0xDD,
    0xDE,
    0xDF,
    0xE0,
    0xFF,
)
WRONG_TYPES: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    1.5,
    float("nan"),
    0,
    -1,
    2**64 - 1,
    -(2**63),
    "",
    "x",
    "2026-02-30",
    b"",
    b"\x00" * 16,
    [],
    [[]],
    {},
    {"type": 1},
    {1: 2},
    msgpack.ExtType(1, b"x"),
    msgpack.Timestamp(2**33, 999_999_999),
)
HUGE_HEADERS: Final = (
    b"\xdd\xff\xff\xff\xff",  # array 32 of 4 Gi elements
    b"\xdd\x7f\xff\xff\xff",
    b"\xdc\xff\xff",  # array 16 of 65535
    b"\xdf\xff\xff\xff\xff",  # map 32
    b"\xc6\xff\xff\xff\xff",  # bin 32 of 4 GiB
    b"\xc5\xff\xff",  # bin 16
    b"\xdb\xff\xff\xff\xff",  # str 32
    b"\xda\xff\xff",  # str 16
    b"\xc9\xff\xff\xff\xff\x01",  # ext 32
)
INVALID_UTF8: Final = (
    b"\xff",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\xbc",
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xc0\xaf",  # overlong "/"
    b"\xf8\x88\x80\x80\x80",
)
NESTING_DEPTHS: Final = (33, 200, 1000, 100_000)
MAX_TREE_INPUT: Final = 16 * 1024
"""Inputs larger than this (already blown up by a mutation) are mutated byte-wise only."""


@dataclass(frozen=True)
class _Raw:
    """A node to splice in as raw bytes after packing (MessagePack cannot express it)."""

    data: bytes


def _packable(tree: Any, raws: list[bytes]) -> Any:
    """Replace each :class:`_Raw` by a unique placeholder ``bin``; remember its bytes."""
    if isinstance(tree, _Raw):
        raws.append(tree.data)
        return b"\x00fuzz-raw-%06d\x00" % (len(raws) - 1)
    if isinstance(tree, list):
        return [_packable(item, raws) for item in tree]
    if isinstance(tree, dict):
        return {_packable(k, raws): _packable(v, raws) for k, v in tree.items()}
    return tree


def pack(tree: Any) -> bytes:
    """Encode a (possibly mutated) tree; :class:`_Raw` nodes are spliced in as their raw bytes."""
    raws: list[bytes] = []
    packed: bytes = msgpack.packb(_packable(tree, raws), use_bin_type=True)
    for index, raw in enumerate(raws):
        placeholder = msgpack.packb(b"\x00fuzz-raw-%06d\x00" % index, use_bin_type=True)
        packed = packed.replace(placeholder, raw, 1)
    return packed


def unpack(data: bytes) -> Any:
    """Parse MessagePack leniently into lists, dicts, bytes, str, numbers; raise ValueError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:  # msgpack raises many types; the engine only needs "not msgpack"
        raise ValueError("not MessagePack") from e


def _paths(tree: Any, limit: int = 2000) -> list[tuple[Any, ...]]:
    """The paths (list indices and dict keys) of up to ``limit`` nodes, at most 24 levels deep,
    the root first; an input already nested deeper is only mutated near its top."""
    found: list[tuple[Any, ...]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(tree, ())]
    while stack and len(found) < limit:
        node, path = stack.pop()
        found.append(path)
        if len(path) >= 24:
            continue
        if isinstance(node, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(node))
        elif isinstance(node, dict):
            stack.extend((value, (*path, key)) for key, value in node.items())
    return found


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        tree = tree[step]
    return tree


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    """Return the tree with the node at ``path`` replaced (the root when ``path`` is empty)."""
    if not path:
        return value
    parent = _get(tree, path[:-1])
    parent[path[-1]] = value
    return tree


class Mutator:
    """Draws hostile inputs from valid seeds with one ``random.Random``.

    Args:
        rng: the source of every choice (seeded by the harness).
        seeds: valid inputs of the target, built with the protocol's own functions.
    """

    def __init__(self, rng: random.Random, seeds: Sequence[bytes]) -> None:
        self.rng = rng
        self.seeds = tuple(seeds)
        self._byte_ops: tuple[Callable[[bytearray], None], ...] = (
            self._flip,
            self._flip,
            self._set_byte,
            self._truncate,
            self._extend,
            self._delete_range,
            self._duplicate_range,
            self._insert_bytes,
            self._splice,
            self._write_int,
        )
        self._tree_ops: tuple[Callable[[Any], Any], ...] = (
            self._wrong_type,
            self._deep_nesting,
            self._huge_length,
            self._invalid_utf8,
            self._oversized_value,
            self._array_edit,
            self._array_edit,
            self._boundary_int,
            self._inner,
            self._inner,
            self._inner,
        )

    # --- entry points -------------------------------------------------------------------------

    def next_input(self) -> bytes:
        """One input: mostly a mutated seed, sometimes random bytes or a random MessagePack tree."""
        roll = self.rng.random()
        if roll < 0.04:
            return self.rng.randbytes(self.rng.randrange(0, 300))
        if roll < 0.07:
            return pack(self._random_tree(3))
        return self.mutate(self.rng.choice(self.seeds))

    def mutate(self, data: bytes, *, depth: int = 0) -> bytes:
        """Apply one to four mutations, each byte-level or structure-aware.

        Args:
            data: a seed or an already mutated input.
            depth: how many ``bin`` layers deep this call is (bounds the recursion).

        Returns:
            The mutated bytes.
        """
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3, 4))):
            if self.rng.random() < 0.5:
                data = self._tree_mutation(data, depth)
            else:
                body = bytearray(data)
                self.rng.choice(self._byte_ops)(body)
                data = bytes(body)
        return data

    # --- byte level ---------------------------------------------------------------------------

    def _position(self, body: bytearray) -> int:
        return self.rng.randrange(len(body)) if body else 0

    def _flip(self, body: bytearray) -> None:
        if body:
            for _ in range(self.rng.choice((1, 1, 2, 8))):
                body[self._position(body)] ^= 1 << self.rng.randrange(8)

    def _set_byte(self, body: bytearray) -> None:
        if body:
            body[self._position(body)] = self.rng.choice(INTERESTING_BYTES)

    def _truncate(self, body: bytearray) -> None:
        del body[self.rng.randrange(len(body) + 1) :]

    def _extend(self, body: bytearray) -> None:
        tail = (
            self.rng.randbytes(self.rng.randrange(1, 64))
            if self.rng.random() < 0.6
            else bytes(body[-self.rng.randrange(1, 64) :])
        )
        body.extend(tail)

    def _delete_range(self, body: bytearray) -> None:
        start = self._position(body)
        del body[start : start + self.rng.randrange(1, 32)]

    def _duplicate_range(self, body: bytearray) -> None:
        start = self._position(body)
        piece = body[start : start + self.rng.randrange(1, 64)]
        at = self._position(body)
        body[at:at] = piece

    def _insert_bytes(self, body: bytearray) -> None:
        at = self._position(body)
        body[at:at] = bytes(
            self.rng.choice(INTERESTING_BYTES) for _ in range(self.rng.randrange(1, 6))
        )

    def _splice(self, body: bytearray) -> None:
        other = self.rng.choice(self.seeds)
        cut, other_cut = self.rng.randrange(len(body) + 1), self.rng.randrange(len(other) + 1)
        body[cut:] = other[other_cut:]

    def _write_int(self, body: bytearray) -> None:
        width = self.rng.choice((1, 2, 4, 8))
        value = self.rng.choice(BOUNDARY_INTS) % (1 << (8 * width))
        at = self._position(body)
        body[at : at + width] = value.to_bytes(width, "big")

    # --- structure-aware ----------------------------------------------------------------------

    def _tree_mutation(self, data: bytes, depth: int) -> bytes:
        try:
            # An input already blown up is mutated bytewise: re-packing it would be the cost.
            tree = unpack(data) if len(data) <= MAX_TREE_INPUT else None
        except ValueError:
            tree = None
        if tree is None:
            body = bytearray(data)
            self.rng.choice(self._byte_ops)(body)
            return bytes(body)
        path = self.rng.choice(_paths(tree))
        node = _get(tree, path)
        operation = self.rng.choice(self._tree_ops)
        try:
            replacement = self._inner(node, depth) if operation == self._inner else operation(node)
            return pack(_set(tree, path, replacement))
        except (TypeError, ValueError, OverflowError, RecursionError):
            # A list as a map key, or a tree already nested too deep to re-pack: mutate bytes.
            body = bytearray(data)
            self.rng.choice(self._byte_ops)(body)
            return bytes(body)

    def _wrong_type(self, node: Any) -> Any:
        return self.rng.choice(WRONG_TYPES)

    def _deep_nesting(self, node: Any) -> Any:
        depth = self.rng.choice(NESTING_DEPTHS)
        opener = self.rng.choice((b"\x91", b"\x81\x00", b"\xdc\x00\x01"))
        return _Raw(opener * depth + b"\xc0")

    def _huge_length(self, node: Any) -> Any:
        return _Raw(self.rng.choice(HUGE_HEADERS) + self.rng.randbytes(self.rng.randrange(0, 9)))

    def _invalid_utf8(self, node: Any) -> Any:
        bad = self.rng.choice(INVALID_UTF8)
        if isinstance(node, str) and node:
            text = node.encode("utf-8", "surrogatepass")
            at = self.rng.randrange(len(text) + 1)
            payload = text[:at] + bad + text[at:]
        else:
            payload = bad
        if len(payload) >= 256:
            return _Raw(b"\xa1" + bad)
        header = (
            bytes([0xA0 | len(payload)]) if len(payload) < 32 else b"\xd9" + bytes([len(payload)])
        )
        return _Raw(header + payload)

    def _oversized_value(self, node: Any) -> Any:
        # Built as raw bytes: a Python list of 70,000 elements would make packing the slow part.
        size = self.rng.choice((300, 70_000, 300_000))
        kind = self.rng.randrange(4)
        if kind == 0:
            return _Raw(b"\xdb" + (2 * size).to_bytes(4, "big") + "ö".encode() * size)
        if kind == 1:
            return _Raw(b"\xc6" + size.to_bytes(4, "big") + bytes(size))
        count = min(size, 70_000) if kind == 2 else min(size // 100, 3000)
        element = b"\x00" if kind == 2 else pack(node)
        return _Raw(b"\xdd" + count.to_bytes(4, "big") + element * count)

    def _array_edit(self, node: Any) -> Any:
        if not isinstance(node, list):
            return [node]
        edited = list(node)
        action = self.rng.randrange(4)
        if action == 0 and edited:
            del edited[self.rng.randrange(len(edited))]
        elif action == 1 and edited:
            edited.insert(self.rng.randrange(len(edited) + 1), self.rng.choice(edited))
        elif action == 2 and len(edited) > 1:
            i, j = self.rng.sample(range(len(edited)), 2)
            edited[i], edited[j] = edited[j], edited[i]
        else:
            edited.append(self.rng.choice(WRONG_TYPES))
        return edited

    def _boundary_int(self, node: Any) -> Any:
        value = self.rng.choice(BOUNDARY_INTS)
        if isinstance(node, int) and not isinstance(node, bool) and self.rng.random() < 0.5:
            return max(-(2**63), min(2**64 - 1, node + self.rng.choice((-1, 1))))
        return value

    def _inner(self, node: Any, depth: int) -> Any:
        """Mutate inside a ``bin`` that holds MessagePack itself (or any bin, bytewise)."""
        if not isinstance(node, bytes) or depth >= 3:
            return self._wrong_type(node)
        return self.mutate(node, depth=depth + 1)

    def _random_tree(self, depth: int) -> Any:
        if depth == 0 or self.rng.random() < 0.4:
            return self.rng.choice(
                (*WRONG_TYPES, self.rng.randbytes(16), self.rng.randrange(0, 300))
            )
        return [self._random_tree(depth - 1) for _ in range(self.rng.randrange(0, 12))]
