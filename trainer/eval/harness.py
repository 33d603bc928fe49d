"""Our checkpoint as an lm-evaluation-harness model: the harness builds the prompts and scores, we compute
log-likelihoods and greedy continuations with our own model on its mesh.

`TrainerLM` subclasses the harness's `TemplateLM`, so the context/continuation split is the harness's own
`_encode_pair` (trailing context spaces move to the continuation; the continuation is enc(ctx+cont)[len(enc(ctx)):])
and everything else follows its reference `hf` backend line by line: left truncation to the context length, BOS only
when the run's data had BOS, the rolling windows of perplexity tasks, greedy generation cut at stop strings. Numbers
from `lm_eval --model hf` on our Hugging Face export and from this model agree to float32 rounding
(tests/test_eval_parity.py).

Registered as `trainer`: `lm_eval.simple_evaluate(model="trainer", model_args="checkpoint=RUN[:STEP]")` after
importing this module, or `python -m trainer.eval.lm_eval_cli --model trainer --model_args checkpoint=RUN ...`.
"""

from __future__ import annotations

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
from trainer.eval.scorer import Scorer, bucket_for
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
    (default RUN_DIR/tokenizer); `max_gen_toks` (256).
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
        ids = list(self.tok.encode(string))
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

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations of each context, cut at the first stop string (`until`, plus EOS and the run's own
        stop strings: a chat format's end-of-turn marker kept as plain text).

        The context is left-truncated to leave `max_gen_toks` of room, as in the hf backend. Sampling arguments
        are ignored: the harness's zero-shot generation tasks decode greedily.
        """
        order = Collator(
            [r.args for r in requests],
            sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]),
            group_by="gen_kwargs",
            group_fn=lambda a: a[1],
        )
        results: list[str] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok.decode([self.eot_token_id]))
            until = until + [s for s in self.tok.stop_strings if s not in until]  # a chat run's plain-text stops
            max_gen = int(kwargs.pop("max_gen_toks"))
            if kwargs.get("do_sample"):
                log.warning("sampling arguments %s ignored: the trainer model decodes greedily", kwargs)
            room = self.max_length - max_gen
            if room <= 0:
                raise ValueError(f"max_gen_toks={max_gen} leaves no room for a context within {self.max_length}")
            prompts = [self.tok_encode(c, left_truncate_len=room) for c in contexts]
            for context, gen_kwargs, new in zip(contexts, all_kwargs, self._greedy(prompts, max_gen, until)):
                text = postprocess_generated_text(self.tok.decode(new), until, None)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                bar.update(1)
        bar.close()
        return order.get_original(results)

    def _greedy(self, prompts: list[list[int]], max_new: int, until: list[str]) -> list[list[int]]:
        """New greedy tokens of each prompt until EOS, a stop string or `max_new` tokens.

        One full forward per new token over a right-padded buffer (a few bucket shapes): simple and exact.
        """
        rows = [list(p) for p in prompts]
        new: list[list[int]] = [[] for _ in rows]
        active = list(range(len(rows)))
        stops = [s for s in until if s]
        for _ in range(max_new):
            if not active:
                break
            length = bucket_for(max(len(rows[i]) for i in active), self.max_length)
            tokens = self.scorer.next_tokens([rows[i] for i in active], length)
            still = []
            for i, token in zip(active, tokens.tolist()):
                if token == self.eot_token_id:
                    continue
                rows[i].append(token)
                new[i].append(token)
                if len(rows[i]) < self.max_length and not any(s in self.tok.decode(new[i]) for s in stops):
                    still.append(i)
            active = still
        return new


def _flag(value: Any) -> bool:
    """`add_bos_token=False` arrives from the command line as the string 'False'."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
