"""Tolerant, unique matching of SEARCH text in a file, and the replacement (pure functions on
strings). Must not: touch files, import torch, or guess between several candidates.

`find_unique` tries, in order, and stops at the first level with any candidate:
  "exact"      lines equal (CRLF/LF never matter: matching is on line contents);
  "trailing"   trailing whitespace of every line ignored;
  "trimmed"    also blank lines at both ends of the SEARCH block ignored;
  "unicode"    also curly quotes, dashes, non-breaking spaces and ellipses normalised (NFC);
  "reindent"   also the whole block shifted by one uniform indentation; the replacement gets
               the same shift.
A level with several candidates is an error (never guessed), unless the edit carries a diff
hunk's line number (`line_hint`) and exactly one candidate sits there. `replace_once` keeps the
file's line endings (per line; new lines get the dominant one) and its missing final newline.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

from dllm_cli.errors import PatchError

LEVELS = ("exact", "trailing", "trimmed", "unicode", "reindent")
_PUNCT = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u00a0": " ", "\u2007": " ", "\u202f": " ", "\u2009": " ", "\u200a": " ", "\u3000": " ",
    "\u2026": "...",
})


# --- matching -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    line_start: int  # first matched line (0-based) of the haystack
    line_end: int  # one past the last matched line
    start: int  # character offsets in the haystack
    end: int
    level: str  # one of LEVELS
    indent_from: str = ""  # "reindent": the SEARCH block's base indentation ...
    indent_to: str = ""  # ... and the file's, to apply to the replacement
    trim_head: int = 0  # "trimmed" and later: blank lines dropped from the SEARCH block's ends
    trim_tail: int = 0


def split_lines(text: str) -> list[str]:
    """Lines with their own endings kept ("\\n", "\\r\\n", or none on a last line)."""
    return [line for line in re.split(r"(?<=\n)", text) if line]


def _content(line: str) -> str:
    return line[:-2] if line.endswith("\r\n") else line[:-1] if line.endswith("\n") else line


def _norm(s: str) -> str:
    return unicodedata.normalize("NFC", s).translate(_PUNCT)


def _lead(s: str) -> str:
    return s[:len(s) - len(s.lstrip(" \t"))]


def find_unique(haystack: str, needle: str, *, path: str = "<text>", hint: int | None = None,
                where: str = "") -> Match:
    """The one place `needle` (whole lines) occurs in `haystack`; PatchError when none or several."""
    hay = [_content(line) for line in split_lines(haystack)]
    offsets = [0]
    for line in split_lines(haystack):
        offsets.append(offsets[-1] + len(line))
    full = [_content(line) for line in split_lines(needle)]
    head = next((k for k, s in enumerate(full) if s.strip()), len(full))
    tail = next((k for k, s in enumerate(reversed(full)) if s.strip()), 0) if head < len(full) else 0
    trimmed = full[head:len(full) - tail]
    for level in LEVELS:
        ndl = full if level in ("exact", "trailing") else trimmed
        if not ndl:
            return _empty_match(hay, offsets, needle, hint, path, where, level, head, tail)
        found = _candidates(hay, ndl, level)
        if len(found) > 1 and hint is not None:
            found = [m for m in found if m[0] == hint] or found
        if len(found) == 1:
            k, frm, to = found[0]
            h, t = (0, 0) if level in ("exact", "trailing") else (head, tail)
            return Match(k, k + len(ndl), offsets[k], offsets[k + len(ndl)], level, frm, to, h, t)
        if len(found) > 1:
            lines = ", ".join(str(m[0] + 1) for m in found[:5])
            raise PatchError(f"{path}: the SEARCH block starting {_first(needle)!r}{where} matches "
                             f"{len(found)} places (lines {lines}); add surrounding lines to make it unique")
    raise PatchError(f"{path}: the SEARCH block starting {_first(needle)!r}{where} matches nothing in the "
                     "file; nothing was changed — the block must copy the file's lines exactly")


def _first(needle: str) -> str:
    return next((s.strip() for s in needle.splitlines() if s.strip()), "")[:60]


def _empty_match(hay, offsets, needle, hint, path, where, level, head, tail) -> Match:
    """An empty SEARCH: fills an empty file, or inserts at a diff hunk's line."""
    if not hay:
        return Match(0, 0, 0, 0, level, trim_head=head, trim_tail=tail)
    if hint is not None and 0 <= hint <= len(hay):
        return Match(hint, hint, offsets[hint], offsets[hint], level)
    raise PatchError(f"{path}: an empty SEARCH block{where} can only fill an empty or new file; "
                     "quote the lines to replace")


_KEYS: dict[str, Callable[[str], str]] = {
    "exact": lambda s: s,
    "trailing": str.rstrip,
    "trimmed": str.rstrip,
    "unicode": lambda s: _norm(s).rstrip(),
    "reindent": lambda s: _norm(s).strip(),  # a prefilter; _reindented checks the shift is uniform
}


def _candidates(hay: list[str], ndl: list[str], level: str) -> list[tuple[int, str, str]]:
    """(line, needle base indent, file base indent) of every window that matches at this level."""
    key = _KEYS[level]
    hay_keys, ndl_keys = [key(s) for s in hay], [key(s) for s in ndl]
    n, first = len(ndl), ndl_keys[0]
    found = []
    for k in range(len(hay) - n + 1):
        if hay_keys[k] != first or hay_keys[k:k + n] != ndl_keys:
            continue
        if level != "reindent":
            found.append((k, "", ""))
        elif (shifted := _reindented(hay[k:k + n], ndl, k)) is not None:
            found.append(shifted)
    return found


def _reindented(window: list[str], ndl: list[str], k: int) -> tuple[int, str, str] | None:
    """The window equals the needle shifted by one uniform indentation: (k, needle base, file base)."""
    pairs = [(w, n) for w, n in zip(window, ndl) if w.strip() or n.strip()]
    if any(not w.strip() or not n.strip() for w, n in pairs):
        return None
    base_n = min((_lead(n) for _, n in pairs), key=len)
    base_w = min((_lead(w) for w, _ in pairs), key=len)
    for w, n in pairs:
        if not (n.startswith(base_n) and w.startswith(base_w)):
            return None
        if _norm(w[len(base_w):]).rstrip() != _norm(n[len(base_n):]).rstrip():
            return None
    return k, base_n, base_w


def _shift(line: str, frm: str, to: str) -> str:
    """Move one replacement line from the SEARCH block's base indentation to the file's."""
    if not line.strip():
        return line.strip(" \t")
    if line.startswith(frm):
        return to + line[len(frm):]
    lead = _lead(line)
    if to.startswith(frm):  # the file is indented deeper: add the difference
        return to[len(frm):] + line
    return line[min(len(lead), len(frm) - len(to)):] if len(frm) > len(to) else line


def replace_once(text: str, search: str, replace: str, *, path: str = "<text>",
                 hint: int | None = None, where: str = "") -> str:
    """`text` with the unique match of `search` replaced; keeps line endings and the final newline."""
    m = find_unique(text, search, path=path, hint=hint, where=where)
    lines = split_lines(text)
    eol = dominant_eol(text)
    new = [_content(s) for s in split_lines(replace)]
    new = _trim_like(new, m.trim_head, m.trim_tail)
    if m.level == "reindent":
        new = [_shift(s, m.indent_from, m.indent_to) for s in new]
    out = [s + eol for s in new]
    at_end = m.line_end == len(lines)
    if out and at_end:
        final = _final_eol(lines, search, replace, eol)
        out[-1] = _content(out[-1]) + final
    elif not out and at_end and m.line_start > 0 and not _has_final_eol(lines):
        lines[m.line_start - 1] = _content(lines[m.line_start - 1])  # the new last line keeps "no EOL"
    return "".join(lines[:m.line_start] + out + lines[m.line_end:])


def _trim_like(lines: list[str], head: int, tail: int) -> list[str]:
    """Drop up to as many blank lines from the replacement's ends as were dropped from SEARCH's."""
    while head and lines and not lines[0].strip():
        lines, head = lines[1:], head - 1
    while tail and lines and not lines[-1].strip():
        lines, tail = lines[:-1], tail - 1
    return lines


def _has_final_eol(lines: list[str]) -> bool:
    return not lines or lines[-1].endswith("\n")


def _final_eol(lines: list[str], search: str, replace: str, eol: str) -> str:
    """The file's own final-newline state, unless a diff says otherwise (`\\ No newline`)."""
    explicit = search and replace and search.endswith("\n") != replace.endswith("\n")
    if explicit:
        return eol if replace.endswith("\n") else ""
    if not lines:
        return eol if replace.endswith("\n") else ""
    return eol if _has_final_eol(lines) else ""


def dominant_eol(text: str) -> str:
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf >= text.count("\n") - crlf else "\n"
