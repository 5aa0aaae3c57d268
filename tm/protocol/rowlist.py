"""A fast :class:`amp.AmpList`: the same bytes on the wire, a fraction of the work.

AMP's own ``AmpList`` encodes each row through a box object, each field through
``toBox``/``retrieve`` and a name conversion, and decodes the value with a nested
``BinaryBoxProtocol`` that receives one string at a time. For a submission of 100 000
jobs or a listing of 100 000 waiting jobs that is most of the CPU the CLI, the TMS and
the dispatcher spend (bench/README.md, "A long queue"). :class:`RowList` reads and writes
the very same bytes (each row a box: its keys sorted, a value 16-bit length-prefixed, a
``None`` of an optional field left out, an empty key ending the box), with the field
conversions decided once per field list instead of once per value.

What it refuses, it refuses as AMP would (a missing required field: ``KeyError``; a
value too long: :class:`amp.TooLong`; a bad value: the field's own error), and a value
that ends in the middle of a box (AMP's parser would silently drop the partial box) is
refused with ``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any

from twisted.protocols import amp

_LENGTH = struct.Struct("!H")
_pack = _LENGTH.pack
_unpack_from = _LENGTH.unpack_from
_END = _pack(0)


# AMP's Unicode is UTF-8, strict both ways: the methods themselves (no Python frame per value).
_utf8_from: Callable[[bytes], str] = bytes.decode
_utf8_to: Callable[[str], bytes] = str.encode


def _decoder(argument: amp.Argument) -> Callable[[bytes], Any]:
    if type(argument) is amp.Unicode:
        return _utf8_from
    return argument.fromString


def _encoder(argument: amp.Argument) -> Callable[[Any], bytes]:
    if type(argument) is amp.Unicode:
        return _utf8_to
    return argument.toString


def parse_boxes(data: bytes) -> list[dict[bytes, bytes]]:
    """The boxes of an AmpList value, as AMP's parser reads them (a key given twice:
    the last value); ValueError if the value ends inside a box or a key is too long."""
    boxes: list[dict[bytes, bytes]] = []
    _parse(data, boxes.append)
    return boxes


def _parse(data: bytes, take: Callable[[dict[bytes, bytes]], Any]) -> None:
    """Hand each box of ``data`` to ``take`` (see :func:`parse_boxes`). The lengths are read
    byte by byte: a key's first length byte is 0 (a key has at most 255 bytes)."""
    box: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    try:
        while pos < end:
            if data[pos]:
                klen = data[pos] << 8 | data[pos + 1]
                raise ValueError(f"an AMP key of {klen} bytes (at most {amp.MAX_KEY_LENGTH})")
            klen = data[pos + 1]
            pos += 2
            if not klen:
                take(box)
                box = {}
                continue
            at = pos + klen
            vlen = data[at] << 8 | data[at + 1]
            box[data[pos:at]] = data[at + 2 : at + 2 + vlen]
            pos = at + 2 + vlen
    except IndexError:  # a length cut off
        raise ValueError("an AMP list ends inside a box") from None
    if pos > end or box:
        raise ValueError("an AMP list ends inside a box")


class RowList(amp.AmpList):
    """``amp.AmpList(fields)`` with a fast codec; a drop-in on either side of a link."""

    def __init__(self, subargs: Sequence[tuple[bytes, amp.Argument]], optional: bool = False):
        super().__init__(list(subargs), optional)
        # (wire key, python name, optional, convert), in the order AMP writes them (sorted).
        self._readers = [
            (key, key.decode("ascii").replace("-", "_"), arg.optional, _decoder(arg))
            for key, arg in subargs
        ]
        writers = []
        for key, arg in sorted(subargs, key=lambda kv: kv[0]):
            if len(key) > amp.MAX_KEY_LENGTH:
                raise amp.TooLong(True, True, key, None)
            name = key.decode("ascii").replace("-", "_")
            writers.append((_pack(len(key)) + key, name, arg.optional, _encoder(arg), key))
        self._writers = writers
        # Decoding: wire key -> (python name, convert); the names a row must have, and the
        # row of every field at None (an absent optional field: None).
        self._by_key = {key: (name, convert) for key, name, _, convert in self._readers}
        self._nones = dict.fromkeys(name for _, name, _, _ in self._readers)
        required = [name for _, name, optional, _ in self._readers if not optional]
        #: A row's required values, as a tuple (None among them: one may be missing).
        self._required_values: Callable[[dict[str, Any]], Any] = (
            itemgetter(*required, required[0]) if required else lambda row: ()
        )
        #: The last value decoded and its rows, handed out once more: the dispatcher checks
        #: a request's arguments (tm.protocol.base.argument_problem) and then AMP decodes
        #: the same bytes object again.
        self._last: tuple[bytes, list[dict[str, Any]]] | None = None

    # --- one row ----------------------------------------------------------------------------

    def encode_row(self, row: dict[str, Any]) -> bytes:
        """One row as its box on the wire (AMP's bytes: keys sorted, None optional left out)."""
        parts: list[bytes] = []
        add = parts.append
        for prefix, name, optional, convert, key in self._writers:
            if optional:
                value = row.get(name)
                if value is None:
                    continue
            else:
                value = row[name]
            data = convert(value)
            if len(data) > amp.MAX_VALUE_LENGTH:
                raise amp.TooLong(False, True, data, key)
            add(prefix)
            add(_pack(len(data)))
            add(data)
        add(_END)
        return b"".join(parts)

    def decode_box(self, box: dict[bytes, bytes]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for key, name, optional, convert in self._readers:
            if optional:
                value = box.get(key)
                row[name] = None if value is None else convert(value)
            else:
                row[name] = convert(box[key])
        return row

    def _decode_rows(self, data: bytes) -> list[dict[str, Any]]:
        """The rows of a value: :func:`_parse` and :meth:`decode_box` in one pass (each value
        converted as it is read, into its field's name; an unknown key ignored, as AMP does)."""
        rows: list[dict[str, Any]] = []
        add = rows.append
        by_key = self._by_key
        nones = self._nones
        required_values = self._required_values
        row: dict[str, Any] = nones.copy()
        pos = start = 0  # start: the box's
        end = len(data)
        try:
            while pos < end:
                if data[pos]:
                    klen = data[pos] << 8 | data[pos + 1]
                    raise ValueError(f"an AMP key of {klen} bytes (at most {amp.MAX_KEY_LENGTH})")
                klen = data[pos + 1]
                pos += 2
                if not klen:
                    if None in required_values(row):
                        self._check_required(data, start, pos)
                    add(row)
                    row = nones.copy()
                    start = pos
                    continue
                at = pos + klen
                vlen = data[at] << 8 | data[at + 1]
                reader = by_key.get(data[pos:at])
                pos = at + 2 + vlen
                if reader is not None:
                    if pos > end:
                        break  # a value cut off: refused below, as the parser does
                    row[reader[0]] = reader[1](data[at + 2 : pos])
        except IndexError:  # a length cut off
            raise ValueError("an AMP list ends inside a box") from None
        if pos > end or start != pos:  # a box begun, not ended
            raise ValueError("an AMP list ends inside a box")
        return rows

    def _check_required(self, data: bytes, start: int, pos: int) -> None:
        """KeyError, as AMP, when the box from ``start`` to ``pos`` lacks a required field (a
        required value that is None may also be one decoded so, e.g. JSON's null)."""
        (box,) = parse_boxes(data[start:pos])
        for key, _, optional, _ in self._readers:
            if not optional and key not in box:
                raise KeyError(key)

    # --- AMP's Argument API -------------------------------------------------------------

    def toStringProto(self, inObject: Iterable[dict[str, Any]], proto: Any) -> bytes:  # noqa: N802
        if isinstance(inObject, FittedRows) and inObject.fitted(self):
            return inObject.wire  # rows fitted to a value by fit_rows: already encoded
        return b"".join([self.encode_row(row) for row in inObject])

    def fromStringProto(self, inString: bytes, proto: Any) -> list[dict[str, Any]]:  # noqa: N802
        last = self._last
        if last is not None and last[0] is inString:
            self._last = None
            return last[1]
        rows = self._decode_rows(inString)
        # (b"" is one shared object: an empty list is never handed out twice.)
        self._last = (inString, rows) if rows else None
        return rows


_CODECS: dict[tuple[tuple[bytes, amp.Argument], ...], RowList] = {}


def rows_of(fields: Sequence[tuple[bytes, amp.Argument]]) -> RowList:
    """The :class:`RowList` of ``fields`` (one per field list, made once)."""
    key = tuple(fields)
    codec = _CODECS.get(key)
    if codec is None:
        codec = _CODECS[key] = RowList(key)
    return codec


class FittedRows(list[dict[str, Any]]):
    """Rows fitted to one value, with their encoding: sent as is by the :class:`RowList`
    that encoded them, as long as no row was added or removed."""

    wire: bytes = b""
    codec: RowList | None = None
    fitted_count = 0

    def fitted(self, codec: RowList) -> bool:
        return (
            self.codec is not None
            and (codec is self.codec or codec.subargs == self.codec.subargs)
            and len(self) == self.fitted_count
        )


def fit_rows(
    codec: RowList, rows: Iterable[Any], to_amp: Callable[[Any], dict], limit: int
) -> tuple[FittedRows, int]:
    """As many leading ``rows`` as fit in ``limit`` bytes, converted by ``to_amp`` and
    encoded once; (the rows, how many). A row that alone is over AMP's value limit ends
    the list there (it can never be sent)."""
    out = FittedRows()
    parts: list[bytes] = []
    used = 0
    encode = codec.encode_row
    for row in rows:
        d = to_amp(row)
        try:
            data = encode(d)
        except amp.TooLong:
            break
        if used + len(data) > limit:
            break
        out.append(d)
        parts.append(data)
        used += len(data)
    out.wire = b"".join(parts)
    out.codec = codec
    out.fitted_count = len(out)
    return out, len(out)
