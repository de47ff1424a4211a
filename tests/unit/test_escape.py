"""Strings from other processes reach no terminal raw: escape.printable() and every text writer
(the trace table on both of its paths, --fate lines, the top table); JSON stays exact."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from records import call, fake_proc, recipient

from sigscope import top
from sigscope.decode import Decoder, ProcResolver
from sigscope.model.escape import printable
from sigscope.outputs.trace import JsonWriter, TextWriter

EVIL = "\x1b[31mRED\n\x1b[0m"


@pytest.mark.parametrize(("raw", "shown"), [
    ("bash", "bash"),
    ("café", "café"),                      # printable non-ASCII stays
    ("a b", "a b"),
    ("", ""),
    (EVIL, "\\x1b[31mRED\\n\\x1b[0m"),
    ("tab\there\rcr", "tab\\there\\rcr"),
    ("back\\slash", "back\\\\slash"),      # unambiguous: a name that spells an escape
    ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),   # NUL, DEL, C1 CSI
    ("\u202eevil", "\\u202eevil"),         # right-to-left override
    ("\ufffd", "\ufffd"),                  # what non-UTF-8 bytes decode to: printable
    ("\U000e0001", "\\U000e0001"),         # a tag character (format, not printable)
])
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert "\x1b" not in printable(raw) and "\n" not in printable(raw)


def test_printable_returns_the_same_object_when_nothing_to_escape() -> None:
    name = "ora_pmon_orcl"
    assert printable(name) is name


def _evil_batch() -> bytes:
    evil = EVIL.encode()
    records = [call(call_id=1000 + i, ret=0, via="tgkill", arg_pid=700, arg_tid=701,
                    sender_comm=evil, **recipient(701, group=0, comm=evil)) for i in range(20)]
    records.append(call(call_id=3000, ret=-3, arg_pid=999999, sender_comm=b"\xff\xfe%s"))
    return b"".join(records)


def test_text_table_escapes_on_both_paths(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {700: (700, "leader"), 701: (700, "x\ny")})
    batch = _evil_batch()
    by_events, by_lines = io.StringIO(), io.StringIO()
    TextWriter(by_events).events(Decoder(ProcResolver(str(proc)), wall_offset_ns=7).decode(batch))
    writer = TextWriter(by_lines)
    writer.runs(Decoder(ProcResolver(str(proc)), wall_offset_ns=7).runs(batch))
    assert by_lines.getvalue() == by_events.getvalue()  # the storm path equals the Event path
    text = by_lines.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 21  # no forged line
    assert lines[0].split()[3] == "\\x1b[31mRED\\n\\x1b[0m"
    assert "\ufffd\ufffd%s" in lines[-1]


def test_json_keeps_the_exact_name() -> None:
    events = Decoder(wall_offset_ns=7).decode(_evil_batch())
    out = io.StringIO()
    JsonWriter(out).events(events)
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["sender"]["comm"] == EVIL and first["target"]["comm"] == EVIL
    assert "\x1b" not in out.getvalue()  # JSON escapes it itself (\u001b)


def test_json_is_valid_on_an_ascii_stream() -> None:
    class AsciiStream(io.StringIO):
        encoding = "ascii"

    events = Decoder(wall_offset_ns=7).decode(_evil_batch())
    out = AsciiStream()
    JsonWriter(out).events(events)
    out.getvalue().encode("ascii")  # no character the stream cannot take
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["sender"]["comm"] == "\ufffd\ufffd%s"


def test_fate_lines_escape() -> None:
    from sigscope.fate import Fate

    events = Decoder(wall_offset_ns=7).decode(_evil_batch())[:1]
    fate = Fate(id=events[0].id, event=events[0], ktime_ns=10, time_ns=17, effect="ignored",
                pid=700, tid=701, comm=EVIL)
    out = io.StringIO()
    TextWriter(out, fate=True).events([*events, fate])
    text = out.getvalue()
    assert "\x1b" not in text and len(text.splitlines()) == 2
    assert text.count("\\x1b[31mRED\\n\\x1b[0m") == 3  # sender, target, the fate's thread


def test_top_table_escapes_and_keeps_the_last_table_on_ctrl_c() -> None:
    key = top.RowKey(1, EVIL, 2, "t\x07bell", 10, "kill", 0, "delivered")
    interval = top.Interval(time=0.0, interval_s=1.0, rows=[(key, 3)], keys=1)
    text = top.render_table(interval)
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b[31mRED\\n\\x1b[0m" in text and "t\\x07bell" in text

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    writer = top.IntervalWriter(tty)
    writer.write(interval)
    writer.write(interval._replace(final=True, interval_s=0.3))
    screen = tty.getvalue()
    # The final partial interval goes below the last full table: no clear before it.
    assert screen.count(top.CLEAR_SCREEN) == 1 and screen.startswith(top.CLEAR_SCREEN)
    assert screen.index("(final, partial)") > screen.index("interval 1.00s")


# --- an output encoding that cannot represent every character --------------------------------

def _ascii_stream(errors: str) -> io.TextIOWrapper:
    # What PYTHONIOENCODING=ascii gives: sigscope's own stdout is "backslashreplace"; a caller
    # of the API may hand in a strict one.
    return io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors=errors, newline="\n")


def _written(stream: io.TextIOWrapper) -> list[str]:
    stream.flush()
    return stream.buffer.getvalue().decode("ascii").splitlines()  # type: ignore[attr-defined]


def _accented_batch() -> bytes:
    # "café" (a printable non-ASCII name) as sender and target; and a euro sign, which takes
    # \\u20ac in ASCII.
    records = [call(call_id=1000 + i, ret=0, via="tgkill", arg_pid=700, arg_tid=701,
                    sender_comm="café".encode(), **recipient(701, group=0, comm="€x".encode()))
               for i in range(3)]
    return b"".join(records)


@pytest.mark.parametrize("errors", ["strict", "backslashreplace"])
@pytest.mark.parametrize("path", ["events", "runs"])
def test_text_table_stays_aligned_on_an_ascii_stream(errors: str, path: str) -> None:
    stream = _ascii_stream(errors)
    writer = TextWriter(stream)
    writer.header()
    decoder = Decoder(wall_offset_ns=7)
    if path == "runs":
        writer.runs(decoder.runs(_accented_batch()))
    else:
        writer.events(decoder.decode(_accented_batch()))
    header, *rows = _written(stream)
    assert len(rows) == 3
    for row in rows:
        # Escaped before padding: each column starts under its header.
        assert row.index("caf\\xe9") == header.index("COMM")
        assert row.index("tgkill") == header.index("VIA")
        assert row.index("\\u20acx") == header.index("TCOMM")
        assert row.index("0 ", header.index("RESULT")) == header.index("RESULT")


def test_fate_lines_stay_aligned_on_an_ascii_stream() -> None:
    from sigscope.fate import Fate

    (event, *_rest) = Decoder(wall_offset_ns=7).decode(_accented_batch())
    fate = Fate(id=event.id, event=event, ktime_ns=10, time_ns=17, effect="ignored", pid=700,
                tid=701, comm="é")
    stream = _ascii_stream("strict")
    writer = TextWriter(stream, fate=True)
    writer.header()
    writer.events([event, fate])
    header, send, fate_line = _written(stream)
    assert send.index("tgkill") == header.index("VIA")
    assert fate_line.index("SIGUSR1") == header.index("SIG")
    assert fate_line.split()[4] == "\\xe9"


def test_top_table_stays_aligned_on_an_ascii_stream() -> None:
    key = top.RowKey(1, "café", 2, "€x", 10, "kill", 0, "delivered")
    interval = top.Interval(time=0.0, interval_s=1.0, rows=[(key, 3)], keys=1)
    stream = _ascii_stream("strict")
    top.IntervalWriter(stream, append=True).write(interval)
    _stamp, header, row, *_totals = _written(stream)
    assert row.index("caf\\xe9") == header.index("COMM")
    assert row.index("\\u20acx") == header.index("TCOMM")
    assert row.index("0 ", header.index("RESULT")) == header.index("RESULT")


def test_json_keeps_non_ascii_as_itself_on_a_utf8_stream() -> None:
    stream = io.TextIOWrapper(io.BytesIO(), encoding="UTF8", errors="strict")
    JsonWriter(stream).events(Decoder(wall_offset_ns=7).decode(_accented_batch()))
    stream.flush()
    text = stream.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]
    assert '"comm":"café"' in text
    assert json.loads(text.splitlines()[0])["target"]["comm"] == "€x"


@pytest.mark.parametrize(("encoding", "raw", "shown"), [
    ("ascii", "café", "caf\\xe9"),
    ("ascii", "€\U0001f600", "\\u20ac\\U0001f600"),
    ("ascii", "a\x1bb\\", "a\\x1bb\\\\"),       # printable()'s escapes stay as they are
    ("latin-1", "café€", "café\\u20ac"),        # é is latin-1; € is not
    ("UTF8", "café€", "café€"),
    (None, "café€", "café€"),                   # io.StringIO: no encoding, takes anything
    ("no-such-codec", "café", "caf\\xe9"),      # unknown: as ASCII
])
def test_printable_for_an_encoding(encoding: str | None, raw: str, shown: str) -> None:
    from sigscope.model.escape import encodes_everything, printable_for

    assert printable_for(encoding)(raw) == shown
    assert encodes_everything(encoding) == (encoding in (None, "UTF8"))
