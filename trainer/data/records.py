"""Structured records (a JSONL line, a Parquet or dataset row) turned into one text or into one exchange.

Instruction datasets keep a record's parts in several fields (instruction / input / output, prompt / completion,
problem / solution). Two ways to say how they make a text, in text and chat mode alike:
- a field map, `--fields instruction,input,output`: text mode joins the non-empty fields with a blank line; chat mode
  makes the last field the assistant's reply and the others, joined the same way, the user's turn;
- a Jinja row template, `--template '{{ problem }}\\n\\n{{ solution }}'`: the record's fields are its variables; text
  mode takes the rendering as the document, chat mode as the user's turn, with the reply in the one `--fields` field.
Without either, text mode reads `--text-field` and chat mode recognises the record's shape (trainer.data.conversations).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from trainer.data import DataError, lines

Message = dict[str, str]


@dataclasses.dataclass(frozen=True)
class Row:
    """One record and where it came from: its stable key (train/val split) and, for errors, its file and line."""

    key: str
    value: Any
    path: str
    offset: int = -1  # JSONL: the line's byte offset; -1: a row of a table or dataset
    line: int = 0  # the 1-based line or row number when known without counting (0: count on demand)
    replaced: int = 0  # invalid UTF-8 sequences replaced with U+FFFD in the line

    def where(self) -> str:
        """`path:line` (counting the lines before it when the unit started mid-file), or `path: row N`."""
        if self.offset < 0:
            return f"{self.path}: row {self.line}"
        return f"{self.path}:{self.line or lines.line_number(self.path, self.offset)}"


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


@functools.lru_cache(maxsize=8)
def compile_template(template: str) -> Any:
    """The compiled row template; a DataError naming the syntax error (checked before any work starts)."""
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise DataError(f"--template is not a valid Jinja template: {e.message} (line {e.lineno})") from None


def check_format(fields: tuple[str, ...], template: str, chat: bool) -> None:
    """Refuse a field map / template combination that can't work, in one line, before reading anything."""
    if template:
        compile_template(template)
        if chat and len(fields) != 1:
            raise DataError("--template in chat mode renders the user's turn: name the reply's field with --fields X")
        if not chat and fields:
            raise DataError("give either --fields or --template in text mode, not both")
    elif chat and len(fields) == 1:
        raise DataError(f"--fields {fields[0]}: chat mode needs the prompt's field(s) then the reply's, e.g. a,b")


def _keys(record: dict[str, Any]) -> str:
    return ", ".join(sorted(map(str, record)))[:200]


def _render(template: str, record: dict[str, Any], where: str) -> str:
    import jinja2

    try:
        return compile_template(template).render(**record)
    except jinja2.exceptions.TemplateError as e:
        raise DataError(f"{where}: --template failed on this record ({e}; keys: {_keys(record)})") from None


def _field_text(record: dict[str, Any], name: str, where: str) -> str:
    if name not in record:
        raise DataError(f"{where} has no field {name!r} (keys: {_keys(record)})")
    value = record[name]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} is {type(value).__name__}, not text")
    return value


def _joined(record: dict[str, Any], names: tuple[str, ...], where: str) -> str:
    return "\n\n".join(t for t in (_field_text(record, n, where) for n in names) if t)


def record_text(row: Row, fields: tuple[str, ...], template: str) -> str:
    """Text mode: the document a record makes through the field map or the row template."""
    if not isinstance(row.value, dict):
        raise DataError(f"{row.where()}: expected a JSON object, got {type(row.value).__name__}")
    if template:
        return _render(template, row.value, row.where())
    return _joined(row.value, fields, row.where())


def record_messages(row: Row, fields: tuple[str, ...], template: str) -> list[Message]:
    """Chat mode: the user turn and the assistant reply a record makes through the field map or the row template."""
    if not isinstance(row.value, dict):
        raise DataError(f"{row.where()}: expected a JSON object, got {type(row.value).__name__}")
    prompt = _render(template, row.value, row.where()) if template else _joined(row.value, fields[:-1], row.where())
    reply = _field_text(row.value, fields[-1], row.where())
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
