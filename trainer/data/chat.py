"""Chat templates as data, and conversations → (token ids, loss mask).

A template is a Jinja string rendered exactly as transformers' `apply_chat_template` renders it (same sandbox, same
options, same variables), so the exported Hugging Face tokenizer reproduces the training text. The template names the
string that ends an assistant turn (`<|im_end|>`, `<|end|>`, or the tokenizer's EOS), and that marker is either
- one token id: a token the vocabulary already has (`<|endoftext|>` in a GPT-2 vocabulary, `</s>`), or one the
  template declares special (ChatML's markers), added to the tokenizer when it lacks it; generation stops at the id;
- plain text of several tokens (KodaLite v0.1's `<|end|>`, five GPT-2 BPE tokens): nothing is added to the
  vocabulary, and generation stops at the text (a stop string, `chat_template.json`'s `stop_strings`).
`markers` chooses for a tokenizer that splits a marker (`MARKER_MODES`): the template's own choice (ChatML special,
KodaLite plain text as its card, a Jinja template's `--end-of-turn` plain text), every marker special, or none.

The loss mask is 1 on the tokens of each assistant reply and on its end-of-turn marker's token(s), 0 on everything
else (system and user turns, role headers, separators). The assistant spans are found from the template itself: the
text that rendering `messages[:i+1]` adds to `messages[:i]` + the generation prompt is reply i, up to its end-of-turn
marker. The conversation is then tokenized whole, as at inference, and each token takes the mask of the characters
it covers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from trainer.data import DataError

ROLES = ("system", "user", "assistant")
Message = dict[str, str]
# How markers the tokenizer splits are kept: as the template says, all as new special ids, or all as plain text.
MARKER_MODES = ("template", "special", "text")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A named chat format: its Jinja text, the string that ends a turn (None: the tokenizer's EOS), the special tokens
    it needs as single ids (added to a tokenizer that splits them) and every marker it writes (`markers="special"`)."""

    name: str
    jinja: str
    end_of_turn: str | None
    special_tokens: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()


# Newlines live inside expressions: transformers renders with trim_blocks, which eats a newline after a block tag.
# A turn that follows an assistant reply starts with the newline that ends the reply's last line (KodaLite, SmallCoder):
# the text of a single exchange is exactly the card's, and later turns each start on a line of their own.
_AFTER_REPLY = "{% if not loop.first and messages[loop.index0 - 1]['role'] == 'assistant' %}{{ '\n' }}{% endif %}"
_PROMPT_AFTER_REPLY = "{% if messages and messages[-1]['role'] == 'assistant' %}{{ '\n' }}{% endif %}"
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# KodaLite's card: `<|user|>\n{question}\n<|assistant|>\n{answer}\n<|end|>`, every marker plain text followed by a
# newline; a system turn is `<|system|>\n{text}\n`; only replies end with `<|end|>`.
_KODALITE = (
    "{% for message in messages %}" + _AFTER_REPLY + "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + '\n<|end|>' }}{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + _PROMPT_AFTER_REPLY + "{{ '<|assistant|>\n' }}{% endif %}"
)
# SmallCoder's card: the prompt `User: {request}\nAssistant:`; the reply follows after one space and ends with the
# tokenizer's EOS; a system turn is its text on the lines before.
_SMALLCODER = (
    "{% for message in messages %}" + _AFTER_REPLY + "{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% else %}{{ message['content'] + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}" + _PROMPT_AFTER_REPLY + "{{ 'Assistant:' }}"
    "{% endif %}"
)
_ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
_ALPACA = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}{{ '" + _ALPACA_PREAMBLE + "' }}"
    "{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '\n\n### Instruction:\n' + message['content'] }}{% elif message['role'] == 'assistant' %}"
    "{{ '\n\n### Response:\n' + message['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\n### Response:\n' }}{% endif %}"
)
_CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")
_KODALITE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

TEMPLATES = {
    "chatml": ChatTemplate("chatml", _CHATML, "<|im_end|>", _CHATML_MARKERS, _CHATML_MARKERS),
    "kodalite": ChatTemplate("kodalite", _KODALITE, "<|end|>", (), _KODALITE_MARKERS),  # plain text, as the card
    "alpaca": ChatTemplate("alpaca", _ALPACA, None),
    "smallcoder": ChatTemplate("smallcoder", _SMALLCODER, None),
}


def resolve_template(spec: str, end_of_turn: str | None = None, markers: str = "template") -> ChatTemplate:
    """`chatml` | `kodalite` | `alpaca` | `smallcoder`, or a Jinja string (anything with `{{` or `{%`) whose turns
    end with `end_of_turn` (default: the tokenizer's EOS). `end_of_turn` also replaces a named template's marker
    (e.g. kodalite with `<|endoftext|>`); its other markers then stay plain text.

    `markers` (`MARKER_MODES`) decides what happens to markers the tokenizer splits into several tokens:
    `template` keeps the template's own choice (ChatML's are special tokens; KodaLite's, and an `end_of_turn` given
    here, plain text: a base model's vocabulary and embedding stay as they are), `special` adds every marker as a new
    special id (the embedding grows), `text` adds none. A marker the vocabulary already holds as one id is that id.
    """
    if markers not in MARKER_MODES:
        raise DataError(f"--markers {markers!r}: use one of {', '.join(MARKER_MODES)}")
    if spec in TEMPLATES:
        template = TEMPLATES[spec]
        if end_of_turn and end_of_turn != template.end_of_turn:
            if template.end_of_turn is None:
                raise DataError(
                    f"chat template {spec} ends turns with the tokenizer's EOS; --end-of-turn can't "
                    "change it (write a Jinja template instead)"
                )
            jinja = template.jinja.replace(template.end_of_turn, end_of_turn)
            kept = tuple(m for m in template.markers if m != template.end_of_turn) + (end_of_turn,)
            template = ChatTemplate(f"{spec}+{end_of_turn}", jinja, end_of_turn, (), kept)
    elif "{{" not in spec and "{%" not in spec:
        raise DataError(f"chat template {spec!r} is neither one of {', '.join(TEMPLATES)} nor a Jinja string")
    else:
        _environment().from_string(spec)  # a syntax error is named now, not at the first conversation
        template = ChatTemplate("jinja", spec, end_of_turn or None, (), (end_of_turn,) if end_of_turn else ())
    if markers == "special":
        return dataclasses.replace(template, special_tokens=template.markers)
    if markers == "text":
        return dataclasses.replace(template, special_tokens=())
    return template


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The Jinja environment transformers renders chat templates in (ImmutableSandboxedEnvironment, trim_blocks,
    lstrip_blocks, loop controls, `raise_exception`): the same text here as in `apply_chat_template`."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env


def render(
    template: ChatTemplate,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The conversation as text through the template (what `apply_chat_template(..., tokenize=False)` returns)."""
    import jinja2

    try:
        return _compiled(template.jinja).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except jinja2.exceptions.TemplateError as e:
        raise DataError(f"chat template {template.name} failed to render a conversation: {e}") from None


@functools.lru_cache(maxsize=16)
def _compiled(jinja: str) -> Any:
    return _environment().from_string(jinja)


def end_of_turn_text(template: ChatTemplate, tokenizer: Any) -> str:
    """The string that ends an assistant turn for this tokenizer (the template's, else the tokenizer's EOS piece)."""
    return template.end_of_turn or tokenizer.token_text(tokenizer.eos_id)


def end_of_turn_id(template: ChatTemplate, tokenizer: Any) -> int | None:
    """The single id of the end-of-turn marker, or None when it is plain text of several tokens (a stop string).
    A marker the template declares special must be one id: a DataError when the tokenizer splits it (add it first)."""
    text = end_of_turn_text(template, tokenizer)
    if template.end_of_turn is None:
        return int(tokenizer.eos_id)
    ids = tokenizer.encode_with_offsets(text)[0]
    if len(ids) == 1:
        return int(ids[0])
    if text in template.special_tokens:
        raise DataError(
            f"the end-of-turn marker {text!r} is {len(ids)} tokens in this tokenizer, not one: runtimes "
            "could not stop on its id; add it as a special token (prepare --format chat does)"
        )
    return None


def stop_strings(template: ChatTemplate, tokenizer: Any) -> tuple[str, ...]:
    """The text generation must stop at besides the stop ids: the end-of-turn marker when it is plain text."""
    return () if end_of_turn_id(template, tokenizer) is not None else (end_of_turn_text(template, tokenizer),)


def missing_tokens(template: ChatTemplate, tokenizer: Any) -> list[str]:
    """The template's special tokens that the tokenizer does not encode as one id."""
    return [t for t in template.special_tokens if len(tokenizer.encode_with_offsets(t)[0]) != 1]


def normalize(messages: Any, where: str) -> list[Message]:
    """Check a conversation's shape and roles; a DataError naming `where` otherwise."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: a conversation must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise DataError(
                f'{where}: message {i} must be {{"role": one of {", ".join(ROLES)}, "content": text}}, '
                f"got {str(m)[:80]}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def assistant_spans(template: ChatTemplate, messages: Sequence[Message], eot: str, **tokens: str) -> tuple[str, list]:
    """The rendered text and the character spans [start, end) of each assistant reply and its end-of-turn marker."""
    text = render(template, messages, **tokens)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(template, messages[:i], add_generation_prompt=True, **tokens)
        upto = render(template, messages[: i + 1], **tokens)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise DataError(
                f"chat template {template.name} does not render conversations by appending turns (the "
                "text up to a reply is not a prefix of the whole): its assistant tokens can't be masked"
            )
        end = upto.rfind(eot, len(before))
        if end < 0:
            raise DataError(
                f"chat template {template.name} does not end an assistant turn with the end-of-turn "
                f"marker {eot!r}: the model would never learn to stop"
            )
        spans.append((len(before), end + len(eot)))
    return text, spans


def encode(
    template: ChatTemplate,
    messages: Sequence[Message],
    tokenizer: Any,
    *,
    bos: bool = False,
    where: str = "conversation",
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and its loss mask (1 on assistant replies + end-of-turn tokens).

    A conversation whose mask is all zero (no assistant turn, or a template that hides it) is a DataError: training
    on it would teach nothing, silently.
    """
    eot = end_of_turn_text(template, tokenizer)
    eot_id = end_of_turn_id(template, tokenizer)
    tokens = {"bos_token": _piece(tokenizer, tokenizer.bos_id), "eos_token": _piece(tokenizer, tokenizer.eos_id)}
    text, spans = assistant_spans(template, messages, eot, **tokens)
    ids, offsets = tokenizer.encode_with_offsets(text)
    mask = [int(any(start < s_end and end > s_start for s_start, s_end in spans)) for start, end in offsets]
    if not any(mask):
        raise DataError(
            f"{where}: the assistant mask is all zero (no assistant reply, or the template {template.name} "
            "renders none): nothing would be learned from it"
        )
    for s_start, s_end in spans:  # a one-id marker must end the reply as that id: the stop the model learns
        if eot_id is None:  # plain text: its tokens are masked like the reply's, the stop string finds any spelling
            break
        last = max(i for i, (start, end) in enumerate(offsets) if start < s_end and end > s_start)
        if ids[last] != eot_id:
            raise DataError(
                f"{where}: a reply does not end in the end-of-turn token {eot!r} (id {eot_id}) but in id "
                f"{ids[last]}: the template or tokenizer merges it with neighbouring text"
            )
    if bos and tokenizer.bos_id is not None:
        ids, mask = [tokenizer.bos_id] + ids, [0] + mask
    return ids, mask


def _piece(tokenizer: Any, token_id: int | None) -> str:
    return "" if token_id is None else tokenizer.token_text(token_id)


def chat_config(template: ChatTemplate, tokenizer: Any) -> dict[str, Any]:
    """What `chat_template.json` holds beside a tokenizer: the Jinja (transformers' key), the template's name, the
    end-of-turn marker, the single id a reply ends with (the marker's own, or EOS when the marker is plain text) and
    the stop strings (the plain-text marker): what generation and every export stop at."""
    eot_id = end_of_turn_id(template, tokenizer)
    return {
        "chat_template": template.jinja,
        "template": template.name,
        "end_of_turn": end_of_turn_text(template, tokenizer),
        "end_of_turn_id": int(tokenizer.eos_id) if eot_id is None else eot_id,
        "stop_strings": list(stop_strings(template, tokenizer)),
    }


def reply_content(config: dict[str, Any], generated: str) -> str:
    """A generated reply as a message's content, for the conversation's history: the text generation stopped before
    a plain-text marker still holds what the template writes between a reply and its marker (KodaLite's `\\n` before
    `<|end|>`), which rendering the history would write a second time."""
    if not config.get("stop_strings"):
        return generated
    template = ChatTemplate(config.get("template", "jinja"), config["chat_template"], config.get("end_of_turn"))
    sentinel = "\x00"
    text = render(template, [{"role": "user", "content": "?"}, {"role": "assistant", "content": sentinel}])
    after = text[text.rfind(sentinel) + 1 :]
    between = after[: after.find(config["end_of_turn"])] if config["end_of_turn"] in after else ""
    return generated[: -len(between)] if between and generated.endswith(between) else generated
