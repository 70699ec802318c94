"""Hypothesis strategies that build arbitrary protobuf messages from their descriptors.

Any message type, nested to a bounded depth: strings with unicode and control characters
(and now and then one far over the text limits), empty / small / huge repeated fields,
integers at and past their edges, NaN and infinities, enum numbers that are not in the
enum, random bytes, maps. Plus raw byte strings for what goes on the wire undecoded.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import message_factory
from hypothesis import strategies as st

FD = _descriptor.FieldDescriptor
MAX_DEPTH = 3

_INT_RANGES: dict[int, tuple[int, int]] = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}

# Every unicode category except surrogates (which cannot be encoded as UTF-8 at all).
_CHARS = st.characters(exclude_categories=("Cs",))
_CONTROL = st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\u200b", "\ufeff", "\u202e", "\n", "\r\n", "\t"])


def texts(long: bool = False) -> st.SearchStrategy[str]:
    """Short arbitrary text or control-character soup; with `long`, now and then a text far over
    the character limits (only where it is not multiplied by a list)."""
    options = [
        st.text(_CHARS, max_size=40),
        st.lists(st.one_of(_CONTROL, _CHARS), max_size=20).map("".join),
        st.sampled_from(["", " ", "hello world", "positive", "negative", "default", "INPUT", "0", "-1"]),
    ]
    if long:
        options.append(
            st.builds(_times, st.text(_CHARS, min_size=1, max_size=3), st.sampled_from([3000, 150_000]))
        )
    return st.one_of(*options)


def _times(text: str, count: int) -> str:
    return text * count


def _integers(field_type: int) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[field_type]
    edges = [
        v for v in (0, 1, 2, 3, 7, 64, 255, 256, 1024, 65536, low, high, -1, high - 1) if low <= v <= high
    ]
    return st.one_of(
        st.sampled_from(edges), st.integers(low, high), st.integers(max(low, -4), min(high, 300))
    )


def scalar(field: FD, long: bool = False) -> st.SearchStrategy[Any]:
    """Values for one non-message field element (`long`: strings may be very long)."""
    kind = field.type
    if kind == FD.TYPE_STRING:
        return texts(long)
    if kind == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FD.TYPE_BOOL:
        return st.booleans()
    if kind == FD.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if kind == FD.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind == FD.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, max(known) + 5))
    if kind in _INT_RANGES:
        return _integers(kind)
    raise TypeError(f"no strategy for field type {kind} ({field.full_name})")


def _repeated(element: st.SearchStrategy[Any], huge: bool) -> st.SearchStrategy[list[Any]]:
    """Lists: usually short, sometimes empty; with `huge`, sometimes far over request limits."""
    options = [st.lists(element, max_size=5)]
    if huge:
        options.append(st.builds(_repeat, element, st.sampled_from([257, 2000])))
    return st.one_of(*options)


def _repeat(item: Any, count: int) -> list[Any]:
    return [item] * count


def field_values(field: FD, depth: int) -> st.SearchStrategy[Any]:
    """Strategy for the value of `field` (a list for repeated, a dict for maps).

    Sizes stay bounded: huge lists only of scalars near the top, very long strings only as
    single values or as the one item of a top-level list.
    """
    near_top = depth <= 1
    if field.type == FD.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            key = scalar(entry.fields_by_name["key"])
            value_field = entry.fields_by_name["value"]
            if value_field.type == FD.TYPE_MESSAGE:
                return st.dictionaries(key, messages(value_field.message_type, depth + 1), max_size=3)
            return st.dictionaries(key, scalar(value_field), max_size=3)
        element: st.SearchStrategy[Any] = messages(field.message_type, depth + 1)
        return _repeated(element, huge=False) if _is_repeated(field) else element
    if not _is_repeated(field):
        return scalar(field, long=near_top)
    lists = _repeated(scalar(field), huge=near_top)
    if depth == 0 and field.type == FD.TYPE_STRING:
        return st.one_of(lists, st.builds(lambda text: [text], texts(long=True)))
    return lists


def _is_repeated(field: FD) -> bool:
    return bool(field.is_repeated)


def _fill(message: _message.Message, values: dict[str, Any]) -> _message.Message:
    descriptor = message.DESCRIPTOR
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name)
        if field.type == FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, _message.Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif _is_repeated(field):
            target.extend(value)
        elif field.type == FD.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def messages(descriptor: _descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[_message.Message]:
    """Arbitrary instances of the message type `descriptor` (fields set or left unset at random)."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(cls())
    optional = {
        field.name: st.deferred(lambda f=field: field_values(f, depth)) for field in descriptor.fields
    }
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _fill(cls(), values))


def wire_bytes() -> st.SearchStrategy[bytes]:
    """Raw request payloads: random bytes, truncated varints, bogus tags, deep nesting."""
    return st.one_of(
        st.binary(max_size=256),
        st.sampled_from(
            [
                b"",
                b"\x08",
                b"\x0a\xff\xff\xff\xff\x0f",
                b"\x0a\x05ab",
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                b"\x12\x02\x0a\x80",
                b"\x0a\x02\xc3\x28",  # invalid UTF-8 in a string field
                b"\x1a" + b"\x1a\x7f" * 64,
                b"\x0b\x0c",  # group markers (deprecated wire types)
            ]
        ),
    )


def _replaced(seed: _message.Message, field: FD, value: Any) -> _message.Message:
    message = type(seed)()
    message.CopyFrom(seed)
    message.ClearField(field.name)
    return _fill(message, {field.name: value})


def near_valid(seeds: list[_message.Message]) -> st.SearchStrategy[_message.Message]:
    """A valid seed request as is, or with one field replaced by an arbitrary value.

    Random messages are mostly rejected at the first check; these reach the code behind it.
    """
    descriptor = seeds[0].DESCRIPTOR
    fields = list(descriptor.fields)

    def one_field(seed: _message.Message) -> st.SearchStrategy[_message.Message]:
        return st.sampled_from(fields).flatmap(
            lambda field: field_values(field, 0).map(lambda value: _replaced(seed, field, value))
        )

    return st.one_of(st.sampled_from(seeds), st.sampled_from(seeds).flatmap(one_field))


def requests(
    descriptor: _descriptor.Descriptor, seeds: list[_message.Message] | None = None
) -> st.SearchStrategy[_message.Message]:
    """Requests of one RPC: arbitrary messages, and near-valid ones when seeds are known."""
    if not seeds:
        return messages(descriptor)
    return st.one_of(messages(descriptor), near_valid(seeds), near_valid(seeds))
