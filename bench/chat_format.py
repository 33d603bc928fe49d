"""After SFT on the built-in instruction set: how often does greedy decoding answer a held-out prompt in the trained
format and stop on the end-of-turn token? Prints one JSON object.

    python -m bench.chat_format --checkpoint runs/sft-tiny [--limit 200] [--max-new-tokens 64]

Held-out prompts are the questions of the data folder's validation split (the same seeded hash as prepare). A reply
"stops" when generation ended on the end of turn (its id, or its stop string when the marker is plain text); it is
"in format" when it matches the answer pattern of its question kind (what / params / module: FORMATS). Replies naming
the asked function and exact answers are counted too, for information.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

# The answer shape of each question kind, with any identifier where the function's name goes; whether the reply
# names the asked function is counted apart ("names_the_function"): content, not format.
FORMATS = {
    "what": re.compile(r"^`(?P<name>\w+)`: \S.*$"),
    "params": re.compile(r"^`(?P<name>\w+)` takes (no parameters|`\w+`(, `\w+`)*)\.$"),
    "module": re.compile(r"^`(?P<name>\w+)` is defined in the `[\w.]+` module\.$"),
}


def main(argv: list[str] | None = None) -> int:
    """Measure and print {"prompts", "stopped_on_end_of_turn", "in_format", "exact", ...}."""
    p = argparse.ArgumentParser(prog="python -m bench.chat_format", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="an SFT run on data.prepare_corpus=stdlib_qa")
    p.add_argument("--limit", type=int, default=None, help="at most N held-out prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)

    from trainer import storage
    from trainer.data.chat import reply_content
    from trainer.data.conversations import stdlib_instructions
    from trainer.data.units import is_validation
    from trainer.infer.decode import Generator, params_in
    from trainer.run_folder import load_run

    run = load_run(args.checkpoint)
    run.params = params_in(run.config.model.compute_dtype, run.params)  # decoding reads every weight per token
    tok = run.tokenizer
    if tok.end_of_turn_id is None:
        raise SystemExit("error: this run's tokenizer has no chat format (chat_template.json)")
    manifest = storage.read_json(storage.join(run.config.data.path, "manifest.json"))
    held = [(k, m) for k, m in stdlib_instructions() if is_validation(k, manifest["seed"], manifest["val_fraction"])][
        : args.limit
    ]
    generator = Generator(run.config, run.mesh, run.params)
    stopped = in_format = both = named = exact = 0
    examples = []
    start = time.perf_counter()
    for first in range(0, len(held), args.batch_size):
        part = held[first : first + args.batch_size]
        prompts = [tok.encode_with_offsets(tok.render_chat(m[:1]))[0] for _, m in part]
        results = generator.generate(
            prompts,
            args.max_new_tokens,
            eos_ids=tok.stop_ids,
            pad_id=tok.pad_id,
            stop=tok.stop_strings,
            detokenize=tok.decode,
        )
        for (key, messages), result in zip(part, results):
            name, kind = key.split("#")
            ended = result.finish_reason == "stop"  # on a stop id (EOS, end of turn) or a stop string
            text = reply_content(tok.chat, result.text) if ended else result.text
            match = FORMATS[kind].match(text)
            shaped = match is not None
            stopped += ended
            in_format += shaped
            named += shaped and match["name"] == name.rsplit(".", 1)[-1]
            both += ended and shaped
            exact += text == messages[1]["content"]
            if len(examples) < 6:
                examples.append({"prompt": messages[0]["content"], "reply": text, "stopped": ended})
    n = len(held)
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "step": run.step,
                "prompts": n,
                "stopped_on_end_of_turn": stopped / n,
                "in_format": in_format / n,
                "in_format_and_stopped": both / n,
                "names_the_function": named / n,
                "exact": exact / n,
                "seconds": round(time.perf_counter() - start, 1),
                "examples": examples,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
