"""How long a chat template operation's result will be, worked out before it is made.

The template sandbox (:class:`mixdesk.core.chat.sandbox.BudgetedSandbox`) refuses any value
over its size budget. Looking at a result once it exists is too late for the operations whose
output can be many times their input: ``(['x' * 1000] * 100000)|join`` turns an 800 KB list
into 100 MB of text, ``replace``, ``format`` and ``%`` repeat a string once for every place it
goes, ``indent`` and ``wordwrap`` add their text to every line, and turning a list into text
(``{{ list }}``, ``|string``, ``~``, ``|tojson``) writes each item again, as often as the list
holds it. The functions here return the length of such a result, in characters, from the
operands alone.

Counting stops once the count passes ``limit``, so an estimate takes at most about ``limit``
steps however large or deeply nested its operands are. The estimates may be a little high or
low (escapes in a ``repr`` are not counted); they exist to tell a prompt (kilobytes) from a
hostile template's result (gigabytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any

from jinja2.utils import Namespace

#: Characters counted for a value of a type not otherwise known (a loop object, a cycler).
_OTHER_TEXT = 64
#: ``repr`` of a float is at most this long (``-1.2345678901234567e-308``).
_FLOAT_TEXT = 24
_END = object()
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


def text_size(value: Any, limit: int) -> int:
    """The length of ``str(value)``, counted without making it (at most a little past ``limit``).

    A string counts its length; a list, tuple, set or dict the text of its items as ``repr``
    writes them (quotes and separators included), every time it holds them; a number its
    digits.
    """
    if isinstance(value, str):
        return len(value)
    total = 0
    pending: list[Iterator[Any]] = [iter((value,))]
    while pending and total <= limit:
        item = next(pending[-1], _END)
        if item is _END:
            pending.pop()
            continue
        if len(pending) > 1:
            total += 2  # the ", " or ": " before an item
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, Mapping):
            total += 2
            pending.append(chain.from_iterable(item.items()))
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2
            pending.append(iter(item))
        elif isinstance(item, Namespace):  # its repr shows every attribute
            total += 14
            pending.append(iter((vars(item).get("_Namespace__attrs", {}),)))
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += math.ceil(item.bit_length() * math.log10(2)) + 1  # and a sign
        elif isinstance(item, float):
            total += _FLOAT_TEXT
        else:
            total += _OTHER_TEXT
    return total


def largest_text(values: Iterable[Any], limit: int) -> int:
    """The longest text among ``values`` (0 for none)."""
    return max((text_size(v, limit) for v in values), default=0)


def join_size(items: Sequence[Any], separator: Any, limit: int) -> int:
    """Characters of ``separator.join(str(item) for item in items)``."""
    total = text_size(separator, limit) * max(len(items) - 1, 0)
    for item in items:
        if total > limit:
            break
        total += text_size(item, limit - total)
    return total


def replace_size(text: str, old: str, new: str, count: int | None = None) -> int:
    """Characters of ``text.replace(old, new, count)`` (exact)."""
    places = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        places = min(places, count)
    return len(text) + places * (len(new) - len(old))


def format_size(template: str, args: Iterable[Any], limit: int) -> int:
    """Characters of ``template % args`` or ``template.format(*args)``, at most.

    Every field (``%`` or ``{``) may take the longest argument; widths are checked elsewhere.
    """
    fields = template.count("%") + template.count("{")
    return len(template) + fields * largest_text(args, limit)


def indent_size(text: str, width: Any) -> int:
    """Characters of ``text|indent(width)``, at most (every line gets the indent)."""
    indent = len(width) if isinstance(width, str) else max(int(width), 0)
    return len(text) + (text.count("\n") + 1) * indent


def wordwrap_size(text: str, width: int, wrapstring: str | None) -> int:
    """Characters of ``text|wordwrap(width, wrapstring=...)``, at most."""
    lines = len(text) // max(width, 1) + text.count("\n") + 1
    return len(text) + lines * len(wrapstring or "\n")


def expandtabs_size(text: str, tabsize: int) -> int:
    """Characters of ``text.expandtabs(tabsize)``, at most."""
    return len(text) + text.count("\t") * max(tabsize, 0)


def translate_size(text: str, table: Any, limit: int) -> int:
    """Characters of ``text.translate(table)``, at most (every character may become the longest)."""
    values = table.values() if isinstance(table, Mapping) else ()
    return len(text) * max(1, largest_text(values, limit))


def concatenation_size(parts: Sequence[Any], start: Any) -> tuple[int, int]:
    """``sum(parts, start)`` of lists or strings: the result's length, and the items it copies.

    Each step of ``sum`` copies everything so far, so the copying grows with the square of the
    parts: returned separately, as it costs time rather than memory.
    """
    total = len(start)
    copied = 0
    for part in parts:
        total += len(part) if isinstance(part, _SIZED) else 1
        copied += total
    return total, copied


#: Filters that turn their input into text (a list into its ``repr``): a list that holds one
#: long string many times is measured before it is written out.
TEXT_FILTERS = frozenset(
    {
        "capitalize",
        "center",
        "e",
        "escape",
        "forceescape",
        "format",
        "indent",
        "lower",
        "pprint",
        "replace",
        "safe",
        "string",
        "striptags",
        "title",
        "tojson",
        "trim",
        "truncate",
        "upper",
        "urlencode",
        "urlize",
        "wordcount",
        "wordwrap",
        "xmlattr",
    }
)
#: Filters whose input is read as a whole sequence: an iterator is made a list first, so that
#: it can be measured before the filter runs.
SEQUENCE_FILTERS = frozenset({"join", "sum"})
#: ``sum(start=[])`` may copy this many items per item of its result before it counts as
#: over budget (the copying grows with the square of the parts).
_COPIES_PER_ITEM = 16


class _FilterCall:
    """A filter's arguments (its input first), by position or by name."""

    def __init__(self, args: Sequence[Any], kwargs: Mapping[str, Any], limit: int) -> None:
        self.value = args[0]
        self.args = args
        self.kwargs = kwargs
        self.limit = limit

    def arg(self, index: int, key: str, default: Any) -> Any:
        return self.args[index] if len(self.args) > index else self.kwargs.get(key, default)


def _join(c: _FilterCall) -> int:
    if not isinstance(c.value, Sequence):
        return 0
    return join_size(c.value, c.arg(1, "d", ""), c.limit)


def _replace(c: _FilterCall) -> int:
    old, new, count = c.arg(1, "old", ""), c.arg(2, "new", ""), c.arg(3, "count", None)
    if not (isinstance(c.value, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    return replace_size(c.value, old, new, count if isinstance(count, int) else None)


def _format(c: _FilterCall) -> int:
    fill = [*c.args[1:], *c.kwargs.values()]
    if isinstance(c.value, str):
        return format_size(c.value, fill, c.limit)
    text = text_size(c.value, c.limit)  # a list's text: any second character may be a field
    return text + text // 2 * largest_text(fill, c.limit)


def _indent(c: _FilterCall) -> int:
    width = c.arg(1, "width", 4)
    if not isinstance(c.value, str) or not isinstance(width, str | int):
        return 0
    return indent_size(c.value, width)


def _wordwrap(c: _FilterCall) -> int:
    width, wrapstring = c.arg(1, "width", 79), c.arg(3, "wrapstring", None)
    if not (isinstance(c.value, str) and isinstance(width, int)):
        return 0
    return wordwrap_size(c.value, width, wrapstring if isinstance(wrapstring, str) else None)


def _tojson(c: _FilterCall) -> int:
    indent = c.arg(1, "indent", None)
    spaces = indent if isinstance(indent, int) and not isinstance(indent, bool) else 0
    return text_size(c.value, c.limit) * (1 + max(spaces, 0))


def _pprint(c: _FilterCall) -> int:
    return 2 * text_size(c.value, c.limit)  # a line break and an indent for nested items


def _sum(c: _FilterCall) -> int:
    start = c.arg(2, "start", 0)
    if not (isinstance(c.value, Sequence) and isinstance(start, _SIZED)):
        return 0
    total, copied = concatenation_size(c.value, start)
    return max(total, copied // _COPIES_PER_ITEM)


#: Filters whose result can be many times their input, and how long it will be.
_GROWING_FILTERS: dict[str, Callable[[_FilterCall], int]] = {
    "join": _join,
    "replace": _replace,
    "format": _format,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "tojson": _tojson,
    "pprint": _pprint,
    "sum": _sum,
}


def filter_result_size(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], limit: int
) -> int:
    """The characters (or items) filter ``name`` makes of ``args`` (its input first), at most.

    0 for filters whose result cannot outgrow their input. ``join``'s and ``sum``'s input
    must already be a sequence (see :data:`SEQUENCE_FILTERS`).
    """
    if not args:
        return 0
    call = _FilterCall(args, kwargs, limit)
    grown = _GROWING_FILTERS[name](call) if name in _GROWING_FILTERS else 0
    if name in TEXT_FILTERS:
        return max(grown, text_size(call.value, limit))
    return grown


def method_result_size(
    method: Any, args: Sequence[Any], kwargs: Mapping[str, Any], limit: int
) -> int:
    """The characters a string method called from a template makes, at most (0: not one that grows).

    ``join``'s argument must already be a sequence.
    """
    method = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return 0
    name = getattr(method, "__name__", "")
    first = args[0] if args else None
    if name == "join" and isinstance(first, Sequence):
        return join_size(first, owner, limit)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str):
        new, count = args[1], args[2] if len(args) > 2 else kwargs.get("count", -1)
        if isinstance(new, str):
            return replace_size(owner, args[0], new, count if isinstance(count, int) else None)
    if name == "format":
        return format_size(owner, [*args, *kwargs.values()], limit)
    if name == "format_map" and isinstance(first, Mapping):
        return format_size(owner, first.values(), limit)
    if name == "expandtabs":
        tabsize = first if first is not None else kwargs.get("tabsize", 8)
        return expandtabs_size(owner, tabsize if isinstance(tabsize, int) else 8)
    if name == "translate":
        return translate_size(owner, first, limit)
    return 0


def format_args(right: Any) -> Iterable[Any]:
    """The values ``template % right`` puts into the template."""
    if isinstance(right, tuple):
        return right
    if isinstance(right, Mapping):
        return right.values()
    return (right,)
