"""Strings other processes chose, made safe for a terminal.

Any unprivileged process names itself with prctl(PR_SET_NAME) (or by its executable's name):
its comm may hold an escape sequence that recolours or rewrites root's terminal, a newline that
forges a trace line, or bytes that are not UTF-8 (the decoder maps those to U+FFFD). Every text
output passes such strings through ``printable()``, as ps(1) and strace(1) escape theirs:

    \\n \\r \\t \\\\   for newline, carriage return, tab and the backslash itself (so that an
                  escape in the output is never ambiguous with a name that spells one)
    \\xNN         for every other character below U+0100 that is not printable (C0, DEL, C1)
    \\uNNNN       for other non-printable characters (format and separator characters such as
    \\UNNNNNNNN   U+202E, which reorders text on a terminal, and lone surrogates)

Printable characters, non-ASCII ones included, are kept, unless the output's encoding cannot
represent them (PYTHONIOENCODING=ascii, a latin-1 terminal): ``printable_for(encoding)`` escapes
those too, in the same three forms, so that a column is padded on the text actually written
(``é`` in ASCII is ``\\xe9``, four characters). JSON output needs none of this: its encoder
escapes control characters itself, and keeps the value exact (as ``\\uNNNN`` where the output
is not Unicode: ``encodes_everything``).
"""

from __future__ import annotations

import codecs  # loaded by the interpreter's own start-up: costs nothing
from collections.abc import Callable

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with control and non-printable characters (and backslashes) escaped.

    The common case, a name of printable characters without a backslash, costs one
    str.isprintable() and one `in` test, both in C, and returns ``text`` itself."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(map(_escape_char, text))


def printable_or_none(text: str | None) -> str | None:
    return None if text is None else printable(text)


def encodes_everything(encoding: str | None) -> bool:
    """Whether a text stream of ``encoding`` can take every character: a Unicode encoding
    (UTF-8, UTF-16, UTF-32...), or None (an in-memory stream such as io.StringIO has none). An
    encoding Python does not know counts as one that cannot."""
    if encoding is None:
        return True
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    return name.startswith("utf-")


def printable_for(encoding: str | None) -> Callable[[str], str]:
    """``printable``, for an output of ``encoding``: the returned function also escapes, as
    ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, every character the encoding cannot represent.
    Its result can always be written to such a stream, and has the length it shows with.
    For a Unicode encoding (encodes_everything) it is ``printable`` itself."""
    if encodes_everything(encoding):
        return printable
    assert encoding is not None
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        name = "ascii"  # what any stream can take

    def escape(text: str) -> str:
        shown = printable(text)
        try:
            shown.encode(name)
        except UnicodeEncodeError:
            # backslashreplace writes exactly printable()'s forms: \xe9, \u20ac, \U0001f600.
            return shown.encode(name, "backslashreplace").decode(name)
        return shown

    return escape
