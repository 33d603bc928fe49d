"""An Ollama `Modelfile` beside a GGUF: the file, the chat template as a Go template, and the stop strings.

GGUF has no key for stop strings (a chat format whose end of turn is plain text of several tokens, KodaLite v0.1's
`<|end|>`), so Ollama learns them here (`PARAMETER stop`), together with the stop tokens' own text.

The chat template: Ollama renders Go templates, not Jinja. A training format that writes each message as
`prefix(role) + content + suffix(role)` and ends with a fixed generation prompt (ChatML, KodaLite, SmallCoder's
`User:/Assistant:`) is measured from the training template itself — each role rendered around a sentinel — and the
pieces are kept only when putting them back together reproduces the training text of whole conversations. Other
formats (Alpaca's preamble, arbitrary Jinja) get no TEMPLATE and a comment saying so.
"""

from __future__ import annotations

import json
import os
from typing import Any

FILENAME = "Modelfile"
_SENTINEL = "\u2063CONTENT\u2063"
_ROLES = ("system", "user", "assistant")
# Conversations the pieces must reproduce exactly (distinct contents, so no piece can hide in one).
_CHECKS = (
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3?"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!\nHow can I help?"},
        {"role": "user", "content": "Sort [3, 1]."},
        {"role": "assistant", "content": "[1, 3]"},
        {"role": "user", "content": "Thanks"},
    ],
)


def stop_texts(tokenizer: Any) -> list[str]:
    """What generation stops at, as text: each stop token's text (end of turn, EOS), then the stop strings."""
    texts = [tokenizer.token_text(i) for i in tokenizer.stop_ids]
    texts += list(getattr(tokenizer, "stop_strings", ()))
    return [t for t in dict.fromkeys(texts) if t]


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        return tokenizer.render_chat(messages)
    except Exception:  # a template that can't render this shape (e.g. no messages) has no per-message form
        return None


def go_template(tokenizer: Any) -> str | None:
    """The run's chat format as an Ollama Go template, or None when it has none or it is not a per-message format."""
    if tokenizer.chat is None:
        return None
    generation = _render(tokenizer, [])
    if generation is None:
        return None
    pieces = {}
    for role in _ROLES:
        text = _render(tokenizer, [{"role": role, "content": _SENTINEL}])
        if text is None or text.count(_SENTINEL) != 1 or not text.endswith(generation):
            return None
        prefix, rest = text.split(_SENTINEL)
        pieces[role] = (prefix, rest[: len(rest) - len(generation)])
    for conversation in _CHECKS:
        rebuilt = "".join(pieces[m["role"]][0] + m["content"] + pieces[m["role"]][1] for m in conversation)
        if _render(tokenizer, conversation) != rebuilt + generation:
            return None
    literal = [generation, *(p for pair in pieces.values() for p in pair)]
    if any("{{" in p or "}}" in p or '"""' in p for p in literal):
        return None
    (sys_pre, sys_suf), (user_pre, user_suf), (bot_pre, bot_suf) = (pieces[r] for r in _ROLES)
    return (
        f'{{{{ range .Messages }}}}{{{{ if eq .Role "system" }}}}{sys_pre}{{{{ .Content }}}}{sys_suf}'
        f'{{{{ else if eq .Role "user" }}}}{user_pre}{{{{ .Content }}}}{user_suf}'
        f"{{{{ else }}}}{bot_pre}{{{{ .Content }}}}{bot_suf}{{{{ end }}}}{{{{ end }}}}{generation}"
    )


def modelfile_text(gguf_file: str, tokenizer: Any) -> str:
    """The Modelfile's text for `gguf_file` (a name in the same folder)."""
    lines = [f"# Ollama: ollama create NAME -f {FILENAME}", f"FROM ./{gguf_file}"]
    template = go_template(tokenizer)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    elif tokenizer.chat is not None:
        lines.append(
            f"# the chat format {tokenizer.chat.get('template', 'jinja')!r} has no Go template here: write "
            "prompts in its format (see the chat template in the GGUF / README.md)"
        )
    lines += [f"PARAMETER stop {json.dumps(text, ensure_ascii=False)}" for text in stop_texts(tokenizer)]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: str, gguf_file: str, tokenizer: Any) -> str:
    """Write `folder`/Modelfile for the GGUF `gguf_file` beside it; returns its name."""
    with open(os.path.join(folder, FILENAME), "w", encoding="utf-8") as f:
        f.write(modelfile_text(gguf_file, tokenizer))
    return FILENAME
