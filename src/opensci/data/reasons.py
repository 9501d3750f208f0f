"""Why a file or a table cannot be read, in words people can read.

Libraries word their errors for programmers: Arrow's Thrift decoder names a byte it did not expect
("don't know what type: \\x0f"), Python shows bytes as `b'\\x00ab'`, astropy prefixes the temporary
file's path. `readable` rephrases the messages we know and cleans the rest.
"""

from __future__ import annotations

import ast
import re


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, `readable`."""
    text = str(exc).strip().splitlines()
    return readable(text[0] if text else type(exc).__name__)


_BYTES_LITERAL = re.compile(r"""\bb('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_WHERE = re.compile(r"^(?:\S*?:)?(\d+):(\d+):\s*(?:[EWA]\d\d:\s*)?")
_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)+[^\s:'\"]*")
_SAYINGS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Couldn't deserialize thrift.*"), "its metadata (the footer) is damaged"),
    (
        re.compile(r"^Parquet magic bytes not found.*"),
        "it does not end with the Parquet marker (PAR1): not Parquet, or cut short",
    ),
    (
        re.compile(
            r"^Parquet file size is (\d+) bytes, smaller than the size reported by footer's \((\d+) ?bytes\)"
        ),
        r"it holds \1 bytes where its footer promises \2: cut short",
    ),
    (
        re.compile(r"^CSV parse error: Expected (\d+) columns, got (\d+): "),
        r"a row has \2 fields where the header has \1: ",
    ),
    (re.compile(r"^JSON parse error: (.*?)\.? in row (\d+)$"), r"JSON parse error in row \2: \1"),
]


def _bytes_text(m: re.Match[str]) -> str:
    try:
        raw = ast.literal_eval("b" + m.group(1))
    except (ValueError, SyntaxError):
        return m.group(0)
    return "'" + raw.decode("utf-8", "replace") + "'"


def readable(text: str) -> str:
    """A library's error message as a sentence people can read: known messages rephrased, bytes shown as
    text (b'\\x00ab' → '?ab'), unprintable characters as "?", no server paths (a file's line and column
    stay), at most 300 characters."""
    text = _BYTES_LITERAL.sub(_bytes_text, text.strip())
    where = _WHERE.match(text)
    if where:
        text = f"line {where.group(1)}, column {where.group(2)}: " + text[where.end() :]
    text = _PATH.sub("the file", text)
    for pattern, saying in _SAYINGS:
        text = pattern.sub(saying, text)
    text = re.sub(r"\s+", " ", text).strip()
    text = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)
    return text[:297] + "…" if len(text) > 300 else text
