"""`python -m trainer.generate --checkpoint RUN[:STEP] --prompt TEXT | --prompts FILE.jsonl | --chat [options]`.

Options are named as transformers' `generate` names them. One prompt streams its text to stdout as it comes; a file
of prompts is generated in batches (`--batch-size`) and printed per prompt; `--output json` prints one JSON object per
prompt (`prompt`, `text`, `tokens` (new ones only), `logprobs`, `finish_reason`). `--chat` talks in a loop on stdin
through the tokenizer's chat template. The last stderr line gives tokens/s. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from trainer import cli_args, storage
from trainer.data.chat import reply_content
from trainer.errors import ConfigError, ExitCode, cli
from trainer.infer.decode import Generator, params_in
from trainer.infer.sample import Sampling
from trainer.run_folder import load_run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring and docs/generate.md)."""
    p = cli_args.ArgumentParser(
        prog="python -m trainer.generate", description="Generate text from a run's checkpoint with a KV-cache sampler."
    )
    p.add_argument("--checkpoint", required=True, help="run folder (local or gs://), optionally :STEP (default latest)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt (its text is streamed)")
    source.add_argument("--prompts", help='a JSONL file: one {"prompt": TEXT} object (or a JSON string) per line')
    source.add_argument("--chat", action="store_true", help="an interactive conversation through the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, help="most new tokens per prompt (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample among the most likely tokens holding mass p")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens less likely than min-p × the top token's")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="divide positive / multiply negative logits of tokens already present (1: off)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop at this string (repeatable; the run's chat stop strings are added); not in the text",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt i of a run draws from fold_in(key(seed), i)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the tokenizer's EOS token")
    p.add_argument(
        "--bos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start prompts with BOS (default: as the run's training data did)",
    )
    p.add_argument("--output", choices=("text", "json"), default="text", help="streamed text, or JSON per prompt")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together from --prompts")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="compute dtype (default: the run's model.compute_dtype)",
    )
    return p.parse_args(argv)


def read_prompts(path: str) -> list[str]:
    """Prompts of a JSONL file (local or gs://), refused in one line when a line is not a prompt."""
    if not storage.exists(path):
        raise ConfigError(f"--prompts {path}: no such file")
    prompts = []
    for number, line in enumerate(storage.read_bytes(path).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number} is not JSON ({e.msg})") from None
        text = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ConfigError(f'{path}:{number}: expected {{"prompt": "..."}} or a JSON string')
        prompts.append(text)
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts


def sampling_from(args: argparse.Namespace) -> Sampling:
    """The sampling settings of the command line."""
    return Sampling(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
    )


def check_args(args: argparse.Namespace) -> None:
    """Values argparse can't check, before anything is loaded."""
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be ≥ 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if any(not s for s in args.stop):
        raise ConfigError("--stop needs a non-empty string")
    sampling_from(args)


class Session:
    """A loaded run and the command line's settings: turns prompt texts into completions."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run = load_run(args.checkpoint, args.dtype)
        self.run.params = params_in(self.run.config.model.compute_dtype, self.run.params)
        self.tokenizer = self.run.tokenizer
        self.generator = Generator(self.run.config, self.run.mesh, self.run.params)
        self.sampling = sampling_from(args)
        self.bos = self.run.bos() if args.bos is None else args.bos
        # --stop, then the run's own: a chat format's end-of-turn marker kept as plain text (e.g. KodaLite's <|end|>)
        self.stops = tuple(dict.fromkeys([*args.stop, *self.tokenizer.stop_strings]))
        if self.bos and self.tokenizer.bos_id is None:
            raise ConfigError("--bos: this run's tokenizer has no BOS token")
        self.new_tokens = 0
        self.seconds = 0.0
        self.compile_s = 0.0
        self.prefill = [0, 0.0]

    def encode(self, text: str, special_in_text: bool = False) -> list[int]:
        """Prompt ids: BOS (unless the text is a rendered chat, which carries its own) then the text's tokens."""
        # A rendered chat may hold special tokens as text (an Alpaca reply's '</s>'): encoded as their ids.
        ids = self.tokenizer.encode_with_offsets(text)[0] if special_in_text else self.tokenizer.encode(text)
        return ([self.tokenizer.bos_id] if self.bos and not special_in_text else []) + ids

    def reply_content(self, text: str) -> str:
        """A reply's text as the history's message (without what the template writes before a plain-text marker)."""
        if self.tokenizer.chat is None:
            return text
        return reply_content(self.tokenizer.chat, text)

    def complete(self, prompts: list[list[int]], rows: list[int], stream: bool) -> list[Any]:
        """Generate for one batch; with `stream`, text goes to stdout as it becomes final (one prompt only)."""

        def show(row: int, text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        eos = () if self.args.ignore_eos else self.tokenizer.stop_ids  # EOS and a chat format's end of turn
        results = self.generator.generate(
            prompts,
            self.args.max_new_tokens,
            self.sampling,
            seed=self.args.seed,
            rows=rows,
            eos_ids=eos,
            pad_id=self.tokenizer.pad_id,
            stop=self.stops,
            detokenize=self.tokenizer.decode,
            on_text=show if stream else None,
            chunk=4 if stream else None,
        )
        t = self.generator.timing
        self.new_tokens += t.new_tokens
        self.seconds += t.decode_s
        self.compile_s += t.compile_s
        self.prefill[0] += t.prompt_tokens
        self.prefill[1] += t.prefill_s
        return results

    def report(self) -> str:
        """The closing line: decode and prefill speed, compile time apart."""
        decode = self.new_tokens / self.seconds if self.seconds else 0.0
        prefill = self.prefill[0] / self.prefill[1] if self.prefill[1] else 0.0
        return (
            f"{self.new_tokens} new tokens in {self.seconds:.2f} s: {decode:,.1f} tokens/s "
            f"(prefill {self.prefill[0]} tokens at {prefill:,.0f} tokens/s; compile {self.compile_s:.1f} s; "
            f"step {self.run.step} of {self.run.run_dir})"
        )


def batches(items: list[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    """(index of the first item, items) in groups of `size`."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def json_line(prompt: str, result: Any) -> str:
    """One prompt's result as the JSON line of `--output json`."""
    return json.dumps(
        {
            "prompt": prompt,
            "text": result.text,
            "tokens": result.tokens,
            "logprobs": [round(x, 6) for x in result.logprobs],
            "finish_reason": result.finish_reason,
        },
        ensure_ascii=False,
    )


def run_prompts(session: Session, texts: list[str]) -> None:
    """--prompt / --prompts: batches in order; text (streamed for a single prompt) or one JSON line per prompt."""
    as_json = session.args.output == "json"
    ids = [session.encode(t) for t in texts]
    for start, group in batches(ids, session.args.batch_size):
        stream = not as_json and len(texts) == 1
        if stream:
            sys.stdout.write(texts[0])
            sys.stdout.flush()
        results = session.complete(group, list(range(start, start + len(group))), stream)
        for offset, result in enumerate(results):
            text = texts[start + offset]
            if as_json:
                print(json_line(text, result), flush=True)
            elif stream:
                print(flush=True)
            else:
                print(f"=== prompt {start + offset + 1} ({result.finish_reason})\n{text}{result.text}", flush=True)


def run_chat(session: Session) -> None:
    """--chat: read a user turn per line from stdin, answer it through the chat template, until EOF or /exit."""
    if session.tokenizer.render_chat([{"role": "user", "content": "hi"}]) is None:
        raise ConfigError("--chat needs a chat template, and this run's tokenizer has none; use --prompt")
    messages: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    turn = 0
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids = session.encode(session.tokenizer.render_chat(messages), special_in_text=True)
        result = session.complete([ids], [turn], stream=session.args.output == "text")[0]
        if session.args.output == "json":
            print(json_line(line.rstrip("\n"), result), flush=True)
        else:
            print(flush=True)
        messages.append({"role": "assistant", "content": session.reply_content(result.text)})
        turn += 1


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on input a person must fix (one line on stderr)."""
    args = parse_args(argv)
    check_args(args)
    texts = None if args.chat else ([args.prompt] if args.prompt is not None else read_prompts(args.prompts))
    session = Session(args)
    if args.chat:
        run_chat(session)
    else:
        run_prompts(session, texts)
    print(session.report(), file=sys.stderr, flush=True)
    return ExitCode.OK
