"""Conversations from JSONL in the common shapes, and the built-in instruction set (Q&A over the standard library).

Shapes read, one JSON object per line (detected per line):
- `{"messages": [{"role", "content"}, ...]}` (also `conversations` with ShareGPT's `from`/`value`);
- Alpaca `{"instruction", "input"?, "output"}` and Dolly `{"instruction", "context"?, "response"}`: one user turn
  (the instruction, then a blank line and the input/context when there is one) and one assistant reply;
- `{"prompt", "completion"}`, `{"problem", "solution"}` (or OpenMathInstruct's `generated_solution`) and
  OpenCodeInstruct's `{"input", "output"}`: the first the user turn, the second the reply;
- OpenAssistant trees, nested (`{"prompt": {"text", "role", "replies": [...]}}` or a message with `replies`) or as
  flat message rows (`message_id`, `parent_id`, `role`, `text`, `rank`). The flattening rule: **one conversation per
  tree**, from the root prompt down, taking at every turn the best-ranked reply (lowest `rank`; unranked replies after
  ranked ones, in file order) until a message has no replies; a trailing user turn is dropped. Deleted messages
  (`deleted: true`) are skipped with their subtrees.
Roles `prompter`, `human`, `user` become `user`; `gpt`, `bot`, `assistant` become `assistant`.
Any other record is refused in one line naming the keys it has (a field map or row template, trainer.data.records,
reads it instead). Flat OpenAssistant rows are grouped into trees across their whole file: such a file is read as
one work unit (`read_item` refuses flat rows in a file cut into byte ranges).
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator
from typing import Any

from trainer.data import DataError, records, sources
from trainer.data.chat import Message
from trainer.data.documents import Item
from trainer.data.records import Row

_ROLES = {
    "prompter": "user",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}
Conversation = tuple[str, list[Message]]  # (key: where it came from, messages)


# Two-field shapes: (prompt key, reply keys), tried in this order after messages / instruction / OASST.
_PAIRS = (
    ("prompt", ("completion",)),
    ("problem", ("solution", "generated_solution")),
    ("input", ("output",)),
)


def read_jsonl(paths: list[str]) -> Iterator[Conversation]:
    """Every conversation of the JSONL files (local or gs://, compressed or not), in file order, keyed `path:line`;
    flat OASST rows after each file."""
    for path in paths:
        for row, messages in read_item(Item("jsonl", path)):
            yield row.where(), messages


def is_flat_oasst(record: Any) -> bool:
    """Whether a record is a flat OpenAssistant message row (grouped into trees per file)."""
    return isinstance(record, dict) and "message_id" in record and "replies" not in record


def read_item(item: Item) -> Iterator[tuple[Row, list[Message]]]:
    """The conversations of one item (a JSONL file or its byte range, a Parquet file, an hf: item) with the row each
    came from; through the item's field map / row template when it has one, else by the record's shape."""
    shaped = bool(item.fields or item.template)
    rows = sources.jsonl_rows(item, "is not JSON") if item.kind == "jsonl" else sources.read_rows(item)
    flat: list[tuple[Row, dict[str, Any]]] = []
    for row in rows:
        if shaped:
            yield row, records.record_messages(row, item.fields, item.template)
            continue
        if is_flat_oasst(row.value):
            if item.parts > 1:
                raise DataError(
                    f"{row.where()}: a flat OpenAssistant row in a file cut into parts; its trees need the whole file"
                )
            flat.append((row, row.value))
            continue
        messages = _located(row, from_record)
        if messages:
            yield row, messages
    yield from _flat_trees(flat)


def _located(row: Row, convert: Any) -> Any:
    """`convert(record, where)`, naming the row by its key first and by `path:line` only when it fails (a line
    number in the middle of a file part costs a count of the lines before it)."""
    if row.line:
        return convert(row.value, row.where())
    try:
        return convert(row.value, row.key)
    except DataError as e:
        raise DataError(str(e).replace(row.key, row.where(), 1)) from None


def from_record(record: Any, where: str) -> list[Message]:
    """One JSON record in any supported shape → its messages ([] for an OASST tree without a reply)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("messages", "conversations"):
        if isinstance(record.get(key), list):
            return [_message(m, where) for m in record[key]]
    if "instruction" in record:
        extra = record.get("input") or record.get("context") or ""
        reply = record.get("output", record.get("response"))
        if not isinstance(reply, str):
            raise DataError(f"{where}: an instruction record needs an `output` (Alpaca) or `response` (Dolly) text")
        prompt = record["instruction"] + (f"\n\n{extra}" if extra else "")
        system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return system + [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    root = record.get("prompt") if isinstance(record.get("prompt"), dict) else record
    if "replies" in root:
        return _best_path(root, lambda m: m.get("replies") or [], where)
    for prompt_key, reply_keys in _PAIRS:
        reply_key = next((k for k in reply_keys if k in record), None)
        if prompt_key in record and reply_key is not None:
            prompt, reply = record[prompt_key], record[reply_key]
            if not isinstance(prompt, str) or not isinstance(reply, str):
                raise DataError(f"{where}: `{prompt_key}` and `{reply_key}` must be text")
            system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
            return system + [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    raise DataError(
        f"{where}: not a conversation: expected `messages`, `conversations`, `instruction` + "
        f"`output`/`response`, `prompt` + `completion`, `problem` + `solution`, `input` + `output`, or an "
        f"OpenAssistant tree (keys found: {', '.join(sorted(record))[:120]}); "
        "map other fields with --fields or --template"
    )


def _message(m: Any, where: str) -> Message:
    if not isinstance(m, dict):
        raise DataError(f"{where}: a message must be an object, got {str(m)[:60]}")
    role = m.get("role", m.get("from"))
    content = m.get("content", m.get("value", m.get("text")))
    if role not in _ROLES or not isinstance(content, str):
        raise DataError(f"{where}: message {str(m)[:80]} needs a role ({', '.join(sorted(_ROLES))}) and text content")
    return {"role": _ROLES[role], "content": content}


def _rank(m: dict[str, Any]) -> tuple[int, float]:
    rank = m.get("rank")
    return (0, float(rank)) if isinstance(rank, (int, float)) else (1, 0.0)


def _best_path(root: dict[str, Any], replies: Any, where: str) -> list[Message]:
    """The flattening rule (module docstring): root, then the best-ranked live reply at every turn."""
    path, node = [], root
    while node is not None:
        path.append(_message({"role": node.get("role"), "content": node.get("text")}, where))
        live = [r for r in replies(node) if not r.get("deleted")]
        node = min(live, key=_rank) if live else None  # min is stable: file order among equal ranks
    while path and path[-1]["role"] != "assistant":
        path.pop()
    return path


def _flat_trees(rows: list[tuple[Row, dict[str, Any]]]) -> Iterator[tuple[Row, list[Message]]]:
    children: dict[Any, list[dict[str, Any]]] = {}
    roots = []
    for where, row in rows:
        row = dict(row, _where=where)
        if row.get("deleted"):
            continue
        if row.get("parent_id") is None:
            roots.append(row)
        else:
            children.setdefault(row["parent_id"], []).append(row)
    for root in roots:
        messages = _best_path(root, lambda m: children.get(m["message_id"], []), root["_where"].where())
        if messages:
            yield root["_where"], messages


# ---------------------------------------------------------------------------------------------- built-in set


def stdlib_instructions(limit: int | None = None) -> Iterator[Conversation]:
    """A deterministic instruction set made from this Python's standard library, no download: for every public
    top-level function with a docstring, questions about what it does, its parameters and its module, each answered
    from the source (the docstring's first sentence, the signature, the file). Read with `ast`, nothing imported."""
    root = sysconfig.get_paths()["stdlib"]
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in ("test", "tests", "idlelib", "site-packages") and not d.startswith(("_", "."))
        )
        for filename in sorted(filenames):
            if not filename.endswith(".py") or filename.startswith("_"):
                continue
            path = os.path.join(dirpath, filename)
            module = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            for conversation in _module_questions(path, module):
                yield conversation
                count += 1
                if limit is not None and count >= limit:
                    return


def _module_questions(path: str, module: str) -> Iterator[Conversation]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, ValueError):
        return
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        summary = _first_sentence(doc or "")
        if not summary:
            continue
        params = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs if a.arg != "self"]
        name = f"{module}.{node.name}"
        listed = ", ".join(f"`{p}`" for p in params)
        takes = f"`{node.name}` takes {listed}." if params else f"`{node.name}` takes no parameters."
        qa = [
            ("what", f"What does `{name}` do?", f"`{node.name}`: {summary}"),
            ("params", f"What are the parameters of `{name}`?", takes),
            (
                "module",
                f"Which module defines the function `{node.name}`?",
                f"`{node.name}` is defined in the `{module}` module.",
            ),
        ]
        for kind, question, answer in qa:
            yield f"{name}#{kind}", [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _first_sentence(doc: str, max_chars: int = 160) -> str:
    """The docstring's first sentence on one line, or '' when it is too long to be a short answer."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    end = text.find(". ")
    sentence = text if end < 0 else text[: end + 1]
    return sentence if 8 <= len(sentence) <= max_chars and sentence.isascii() else ""
