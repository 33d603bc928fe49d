"""Our checkpoint as an lm-evaluation-harness model: the harness builds the prompts and scores, we compute
log-likelihoods and greedy continuations with our own model on its mesh.

`TrainerLM` subclasses the harness's `TemplateLM`, so the context/continuation split is the harness's own
`_encode_pair` (trailing context spaces move to the continuation; the continuation is enc(ctx+cont)[len(enc(ctx)):])
and everything else follows its reference `hf` backend line by line: left truncation to the context length, BOS only
when the run's data had BOS, the rolling windows of perplexity tasks, greedy generation cut at stop strings. Numbers
from `lm_eval --model hf` on our Hugging Face export and from this model agree to float32 rounding
(tests/eval/test_eval_parity.py).

Registered as `trainer`: `lm_eval.simple_evaluate(model="trainer", model_args="checkpoint=RUN[:STEP]")` after
importing this module, or `python -m trainer.eval.lm_eval_cli --model trainer --model_args checkpoint=RUN ...`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from trainer.config import Config
from trainer.data import chat as chat_lib
from trainer.data.hf_tokenizer import TOKENIZER_JSON as HF_TOKENIZER_JSON
from trainer.eval.scorer import Scorer, bucket_for
from trainer.infer.decode import Generator
from trainer.infer.sample import Sampling
from trainer.run_folder import load_run

log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256  # the hf backend's default


def _batch_size(value: Any) -> int:
    """The harness passes `batch_size` as an int, a numeric string or 'auto[:N]'; auto means our default."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH_SIZE
    return int(value)


@register_model("trainer")
class TrainerLM(TemplateLM):
    """lm-eval `LM` over a checkpoint of this trainer (see the module docstring).

    Arguments (`--model_args key=value,...`): `checkpoint` RUN_DIR[:STEP]; `batch_size` rows per device call;
    `max_length` context (default model.max_seq_len); `add_bos_token` (default: the run's record, trainer.data.bos,
    when the tokenizer has a BOS token); `prefix_token_id` (default BOS, else EOS, as the hf backend); `tokenizer`
    (default RUN_DIR/tokenizer); `max_gen_toks` (256); `seed` of sampled generations (0).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        batch_size: Any = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        tokenizer: str | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        seed: int = 0,
        **ignored: Any,
    ):
        super().__init__()
        if checkpoint is None:
            raise ValueError("the trainer model needs --model_args checkpoint=RUN_DIR[:STEP]")
        run = load_run(checkpoint, tokenizer=tokenizer)  # a LoRA run: its pinned base and adapters, unmerged
        self.step = run.step
        bos = run.bos() if add_bos_token is None else _flag(add_bos_token)
        self._setup(
            run.config,
            run.mesh,
            run.params,
            run.tokenizer,
            bos,
            _batch_size(batch_size),
            max_length,
            prefix_token_id,
            max_gen_toks,
        )
        self.seed = int(seed)

    @classmethod
    def from_parts(
        cls,
        config: Config,
        mesh: Any,
        params: Any,
        tokenizer: Any,
        add_bos: bool,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
    ) -> TrainerLM:
        """A model over params already on a mesh (evaluation inside a training run)."""
        lm = cls.__new__(cls)
        TemplateLM.__init__(lm)
        lm.step = None
        lm._setup(config, mesh, params, tokenizer, add_bos, batch_size, max_length, None, DEFAULT_MAX_GEN_TOKS)
        return lm

    def _setup(
        self,
        config: Config,
        mesh: Any,
        params: Any,
        tokenizer: Any,
        add_bos: bool,
        batch_size: int,
        max_length: int | None,
        prefix_token_id: int | None,
        max_gen_toks: int,
    ) -> None:
        self.config, self.tok, self.add_bos = config, tokenizer, add_bos
        if add_bos and tokenizer.bos_id is None:
            raise ValueError("add_bos_token is set but the tokenizer has no BOS token")
        self.scorer = Scorer(config, mesh, params, batch_size)
        self.max_length = min(int(max_length or config.model.max_seq_len), config.model.max_seq_len)
        self.custom_prefix = None if prefix_token_id is None else int(prefix_token_id)
        self.max_gen_toks = int(max_gen_toks)
        self.seed = 0
        self.chat_prompts = False  # set once the harness renders prompts through the chat template
        self._generator: Generator | None = None
        self._special: frozenset[int] | None = None
        self._generator_params: Any = None

    # ------------------------------------------------------------------ tokens

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix is not None:
            return self.custom_prefix
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def batch_size(self) -> int:
        """Rows per device call."""
        return self.scorer.batch_size

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs: Any
    ) -> list[int]:
        """Token ids of `string`, with BOS first when the run's data had BOS (like the exported HF tokenizer with
        its `add_bos_token`); `add_special_tokens=False` never adds it."""
        # A prompt rendered through the chat template holds its special tokens as text: encoded as their ids.
        ids = list(self.tok.encode_with_offsets(string)[0] if self.chat_prompts else self.tok.encode(string))
        if (
            self.add_bos
            and add_special_tokens is not False
            and not (add_special_tokens is None and ids[:1] == [self.tok.bos_id])
        ):
            ids = [self.tok.bos_id] + ids
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int]) -> str:
        """Text of `tokens` (ids from EOS on are dropped by the caller)."""
        return self.tok.decode(tokens)

    # ------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), continuation is greedy) for (key, context ids, continuation ids).

        Longest first, `batch_size` rows per call; a row keeps its last max_length + 1 tokens (left truncation).
        """
        order = Collator(requests, sort_fn=lambda r: (-len(r[1]) - len(r[2]), tuple(r[1] + r[2])))
        results: list[tuple[float, bool]] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests")
        for chunk in order.get_batched(n=self.batch_size):
            inputs, targets = [], []
            for _, context, continuation in chunk:
                if not continuation or len(continuation) > self.max_length:
                    raise ValueError(
                        f"a continuation of {len(continuation)} tokens can't be scored within {self.max_length}"
                    )
                whole = (context + continuation)[-(self.max_length + 1) :]
                inputs.append(whole[:-1])
                targets.append(whole[1:])
            for (key, _, continuation), (logprobs, greedy) in zip(chunk, self.scorer.token_logprobs(inputs, targets)):
                n = len(continuation)
                answer = (float(logprobs[-n:].sum()), bool(greedy[-n:].all()))
                results.append(answer)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                bar.update(1)
        bar.close()
        return order.get_original(results)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in disjoint windows of the context length (perplexity tasks)."""
        windows, counts = [], []
        for (text,) in [r.args for r in requests]:
            pairs = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            mine = [(None, *make_disjoint_window(p)) for p in pairs]
            windows += mine
            counts.append(len(mine))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals, start = [], 0
        for request, count in zip(requests, counts):
            total = sum(s for s, _ in scores[start : start + count])
            start += count
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ------------------------------------------------------------------ chat

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer's fingerprint (the harness keys its request caches by it)."""
        return f"trainer-{self.tok.sha256[:16]}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The run's chat template (Jinja), or None when its tokenizer has none."""
        return None if self.tok.chat is None else str(self.tok.chat["chat_template"])

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """A conversation (few-shot turns, then the question) as prompt text through the run's chat template, so a
        chat model answers in the format it was trained on; its special tokens stay ids (`tok_encode`)."""
        if self.tok.chat is None:
            raise ValueError("--apply-chat-template: this run's tokenizer has no chat template")
        self.chat_prompts = True
        chat = self.tok.chat
        return chat_lib.render(
            chat_lib.ChatTemplate(chat.get("template", "jinja"), chat["chat_template"], chat.get("end_of_turn")),
            chat_history,
            add_generation_prompt=add_generation_prompt,
            bos_token="" if self.tok.bos_id is None else self.tok.token_text(self.tok.bos_id),
            eos_token=self.tok.token_text(self.tok.eos_id),
        )

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context on the KV-cache generator (`trainer.infer`), cut at the first stop string
        (`until`, EOS, and a chat format's end of turn: its id and its plain-text marker).

        As the hf backend: contexts longest first, grouped by their generation settings, left-truncated to leave
        `max_gen_toks` of room; greedy unless the task samples (`do_sample` with temperature / top_p / top_k).
        Rows are padded to `batch_size` so every batch reuses one compiled program.
        """
        order = Collator(
            [(i, *r.args) for i, r in enumerate(requests)],
            sort_fn=lambda a: (-len(self.tok_encode(a[1])), a[1]),
            group_by="gen_kwargs",
            group_fn=lambda a: a[2],
        )
        results: list[str] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        for chunk in order.get_batched(n=self.batch_size):
            indices, contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok.decode([self.eot_token_id]))
            until = until + [s for s in self.tok.stop_strings if s not in until]  # a chat run's plain-text stops
            max_gen = int(kwargs.pop("max_gen_toks"))
            room = self.max_length - max_gen
            if room <= 0:
                raise ValueError(f"max_gen_toks={max_gen} leaves no room for a context within {self.max_length}")
            prompts = [self.tok_encode(c, left_truncate_len=room) for c in contexts]
            texts = self.generate_texts(prompts, max_gen, until, sampling_of(kwargs), list(indices))
            for context, gen_kwargs, text in zip(contexts, all_kwargs, texts):
                text = postprocess_generated_text(text, until, None)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                bar.update(1)
        bar.close()
        return order.get_original(results)

    def generate_texts(
        self, prompts: list[list[int]], max_new: int, until: list[str], sampling: Sampling, rows: list[int]
    ) -> list[str]:
        """The text each prompt's new tokens spell, up to a stop id, a stop string or `max_new` tokens; `rows` number
        the prompts' random streams (a row's samples don't depend on its batch)."""
        n = len(prompts)
        padded = prompts + [prompts[0]] * (self.batch_size - n)
        completions = self.generator().generate(
            padded,
            max_new,
            sampling,
            seed=self.seed,
            rows=rows + [rows[0]] * (self.batch_size - n),
            eos_ids=self.tok.stop_ids,
            pad_id=self.tok.pad_id,
            stop=[s for s in until if s],
            detokenize=self.tok.decode,
            prompt_length=bucket_for(max(len(p) for p in prompts), self.max_length),  # few prompt shapes compile
        )
        special = self.special_ids()
        # as the hf backend decodes: the new tokens alone, special tokens left out (stop strings were found in the
        # text with them, as its stopping criteria see it)
        return [self.tok.decode([t for t in c.tokens if t not in special]) for c in completions[:n]]

    def special_ids(self) -> frozenset[int]:
        """Ids a decoded generation leaves out, as transformers' `skip_special_tokens`: BOS, EOS, padding and, for a
        Hugging Face tokenizer, every added token marked special (SentencePiece's decoder drops its own)."""
        if self._special is None:
            ids = {i for i in (self.tok.bos_id, self.tok.eos_id, self.tok.pad_id) if i is not None}
            if self.tok.kind == "hf":
                spec = json.loads(self.tok.files()[HF_TOKENIZER_JSON])
                ids |= {int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special")}
            self._special = frozenset(ids)
        return self._special

    def generator(self) -> Generator:
        """The KV-cache generator over the current params in float32 (rebuilt when the params change)."""
        if self._generator is None or self._generator_params is not self.scorer.params:
            self._generator = Generator(self.scorer.config, self.scorer.mesh, self.scorer.params)
            self._generator_params = self.scorer.params
        return self._generator

    def _greedy(self, prompts: list[list[int]], max_new: int, until: list[str]) -> list[list[int]]:
        """New greedy tokens of each prompt (until a stop id or `max_new`): the generator's, for tests and tools."""
        out = []
        for prompt in prompts:
            completion = self.generator().generate([prompt], max_new, Sampling(), eos_ids=self.tok.stop_ids)[0]
            out.append([t for t in completion.tokens if t not in self.tok.stop_ids])
        return out


def sampling_of(kwargs: dict[str, Any]) -> Sampling:
    """The sampler settings of a task's generation kwargs: greedy unless `do_sample` (or a temperature > 0 without
    it, as transformers reads it); temperature, top_p and top_k as given. Other keys are logged and ignored."""
    known = {"do_sample", "temperature", "top_p", "top_k"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        log.warning("generation settings %s are not used by the trainer model", unknown)
    temperature = float(kwargs.get("temperature", 1.0 if kwargs.get("do_sample") else 0.0) or 0.0)
    if not kwargs.get("do_sample") or temperature == 0.0:
        return Sampling()
    return Sampling(
        temperature=temperature,
        top_p=float(kwargs.get("top_p") or 1.0),
        top_k=int(kwargs.get("top_k") or 0),
    )


def _flag(value: Any) -> bool:
    """`add_bos_token=False` arrives from the command line as the string 'False'."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
