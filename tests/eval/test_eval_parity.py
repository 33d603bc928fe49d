"""Our lm-eval model against the harness's reference backend: `lm_eval`'s `hf` model on the Hugging Face export of
the same checkpoint must give the same per-document log-likelihoods (fp32, within 1e-4) and identical scores on the
8 zero-shot tasks, read offline from small task files in the real schemas."""

import json
import os

import pytest

pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")

from eval_data import sentence, write_task_files
from hf_models import SMALL_MODEL as MODEL
from hf_models import random_params
from sp_tokenizers import sentencepiece

from trainer import checkpoint
from trainer.config import Config, DataConfig
from trainer.eval import tasks
from trainer.eval.harness import TrainerLM
from trainer.export import command as convert_to_hf

TOLERANCE = 1e-4
WITH_ACC_NORM = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "openbookqa")


def make_run(root: str, bos: bool) -> tuple[str, str]:
    """A run folder (params, config whose data manifest says `bos`, tokenizer) and its float32 HF export."""
    data, run, hf = (os.path.join(root, name) for name in ("data", "run", "hf"))
    os.makedirs(data)
    with open(os.path.join(data, "manifest.json"), "w") as f:
        json.dump({"bos": bos}, f)
    checkpoint.save_params(run, Config(model=MODEL, data=DataConfig(path=data)), random_params(MODEL), step=5)
    sentencepiece().save(os.path.join(run, "tokenizer"))
    assert convert_to_hf.main(["--checkpoint", run, "--out", hf, "--dtype", "float32", "--no-verify"]) == 0
    return run, hf


def hf_model(folder: str):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=8)


def greedy_lambada_texts(lm: TrainerLM, wanted: int = 2) -> list[str]:
    """LAMBADA texts whose last word is exactly what the model decodes greedily (so greedy-match accuracy is not
    trivially 0): a context, then the model's first greedy tokens when they spell ' word'."""
    found = []
    for seed in range(100):
        context = sentence(seed, 5)[:-1]
        new = lm._greedy([lm.tok_encode(context)], 3, [])[0]
        for j in range(len(new), 0, -1):
            word = lm.tok.decode(new[:j])
            if (
                word.startswith(" ")
                and word[1:].strip()
                and not any(c.isspace() for c in word[1:])
                and lm._encode_pair(context, word)[1] == new[:j]
            ):
                found.append(context + word)
                break
        if len(found) == wanted:
            return found
    raise AssertionError("no greedy LAMBADA text found")


@pytest.fixture(scope="module")
def no_bos(tmp_path_factory):
    """The KodaLite case: data without BOS. Our model, the export, and task files."""
    root = str(tmp_path_factory.mktemp("eval"))
    run, hf = make_run(root, bos=False)
    ours = TrainerLM(checkpoint=f"{run}:5", batch_size=8)
    task_dir = os.path.join(root, "tasks")
    counts = write_task_files(task_dir, extra_lambada=greedy_lambada_texts(ours))
    return {"run": run, "hf": hf, "ours": ours, "tasks": task_dir, "counts": counts}


@pytest.fixture(scope="module")
def results(no_bos):
    def run(lm):
        return tasks.evaluate(lm, tasks.ZERO_SHOT, no_bos["tasks"], bootstrap_iters=100, log_samples=True)

    return {"ours": run(no_bos["ours"]), "theirs": run(hf_model(no_bos["hf"]))}


def test_every_document_has_the_same_loglikelihoods(results, no_bos):
    ours, theirs = results["ours"]["samples"], results["theirs"]["samples"]
    assert sorted(ours) == sorted(tasks.ZERO_SHOT)
    worst = 0.0
    for task in tasks.ZERO_SHOT:
        assert len(ours[task]) == len(theirs[task]) == no_bos["counts"][task], task
        for a, b in zip(ours[task], theirs[task]):
            assert a["doc_id"] == b["doc_id"] and a["arguments"] == b["arguments"]
            for ra, rb in zip(a["resps"], b["resps"]):
                (ll_a, greedy_a), (ll_b, greedy_b) = ra[0], rb[0]
                assert abs(ll_a - ll_b) <= TOLERANCE, (task, a["doc_id"], ll_a, ll_b)
                assert greedy_a == greedy_b, (task, a["doc_id"])
                worst = max(worst, abs(ll_a - ll_b))
    print(f"largest log-likelihood difference: {worst:.2e}")


def test_every_score_is_identical(results):
    ours, theirs = results["ours"]["results"], results["theirs"]["results"]
    for task in tasks.ZERO_SHOT:
        for metric in ("acc,none", "acc_norm,none"):
            assert ours[task].get(metric) == theirs[task].get(metric), (task, metric)
        assert "acc,none" in ours[task]
    assert ours["lambada_openai"]["perplexity,none"] == pytest.approx(
        theirs["lambada_openai"]["perplexity,none"], rel=TOLERANCE
    )
    assert {t for t in ours if "acc_norm,none" in ours[t]} == set(WITH_ACC_NORM)


def test_lambada_greedy_match_counts_the_greedy_last_words(results, no_bos):
    docs = results["ours"]["samples"]["lambada_openai"]
    greedy = [d["resps"][0][0][1] for d in docs]
    assert greedy[-2:] == [True, True]  # the two texts built from the model's own greedy tokens
    assert results["ours"]["results"]["lambada_openai"]["acc,none"] == pytest.approx(sum(greedy) / len(greedy))


def test_winogrande_scores_the_shared_ending_after_each_option(results):
    """Partial evaluation: the two requests differ in their context (sentence up to the blank + option) and score
    the same continuation."""
    for doc in results["ours"]["samples"]["winogrande"]:
        (ctx1, cont1), (ctx2, cont2) = (tuple(a) for a in doc["arguments"])
        assert cont1 == cont2 and ctx1 != ctx2
        assert ctx1.endswith(doc["doc"]["option1"]) and ctx2.endswith(doc["doc"]["option2"])


def test_boolq_compares_no_and_yes_and_long_passages_are_truncated_from_the_left(results, no_bos):
    lm = no_bos["ours"]
    long_contexts = 0
    for doc in results["ours"]["samples"]["boolq"]:
        assert [a[1] for a in doc["arguments"]] == [" no", " yes"]
        long_contexts += len(lm.tok_encode(doc["arguments"][0][0])) > lm.max_length
    assert long_contexts >= 1


@pytest.fixture(scope="module")
def with_bos(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval_bos"))
    run, hf = make_run(root, bos=True)
    return TrainerLM(checkpoint=run, batch_size=8), hf_model(hf)


def test_with_bos_data_requests_and_perplexity_windows_match(with_bos):
    """A run whose data had BOS: every encoding starts with it, on both sides; loglikelihood (incl. an empty
    context), rolling perplexity over several windows, and greedy generation with stop strings agree."""
    import torch
    from lm_eval.api.instance import Instance

    ours, theirs = with_bos
    assert ours.tok_encode("Hello world")[0] == ours.tok.bos_id
    pairs = [("The river stone", " light"), ("", "Window simple"), ("A bright morning ", "garden city")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    for (a, ga), (b, gb) in zip(ours.loglikelihood(requests), theirs.loglikelihood(requests)):
        assert abs(a - b) <= TOLERANCE and ga == gb
    text = " ".join(sentence(i, 12) for i in range(20))  # several 64-token windows
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0), Instance("loglikelihood_rolling", {}, ("Hi.",), 1)]
    for a, b in zip(ours.loglikelihood_rolling(rolling), theirs.loglikelihood_rolling(rolling)):
        assert abs(a - b) <= TOLERANCE * max(1.0, abs(b) / 100), (a, b)
    for i in range(3):  # greedy generation: the same tokens as transformers' generate
        prompt = ours.tok_encode(sentence(i, 4))
        new = ours._greedy([prompt], 12, [])[0]
        generated = theirs.model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)).long(), max_new_tokens=12, do_sample=False
        )[0, len(prompt) :].tolist()
        assert new == [t for t in generated if t != ours.tok.eos_id][: len(new)] and len(new) >= 1
    free = ours.generate_until([Instance("generate_until", {}, ("The river", {"max_gen_toks": 12}), 0)])[0]
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    cut = ours.generate_until([Instance("generate_until", {}, ("The river", {"until": [stop], "max_gen_toks": 12}), 0)])
    assert cut == [free.split(stop)[0]] and len(cut[0]) < len(free)
