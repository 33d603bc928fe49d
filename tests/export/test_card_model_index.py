"""The HF card of an evaluated fine-tune carries, like the seeds' cards, a `model-index` block with every evaluation
result of its run folder (task, dataset, metric, value, n-shot) and its `base_model`; Hugging Face's own card parser
reads them back."""

import json
import os

import pytest
from hf_models import SMALL_MODEL as MODEL
from hf_models import random_params
from runs import keep_tokenizer, prepare_corpus

from trainer import checkpoint, storage
from trainer.config import CheckpointConfig, Config, DataConfig
from trainer.export import command as convert_to_hf

EVALS = {  # as trainer.eval writes RUN/eval/step_<N>.json (lm-eval's schema)
    10: {
        "results": {
            "arc_easy": {
                "alias": "arc_easy",
                "acc,none": 0.3279,
                "acc_stderr,none": 0.01,
                "acc_norm,none": 0.31,
                "acc_norm_stderr,none": 0.01,
            }
        },
        "n-shot": {"arc_easy": 0},
    },
    20: {
        "results": {
            "hellaswag": {"alias": "hellaswag", "acc,none": 0.2565, "acc_norm,none": 0.27},
            "lambada_openai": {"alias": "lambada_openai", "perplexity,none": 93.78, "acc,none": 0.1822},
        },
        "n-shot": {"hellaswag": 10},
        "configs": {"lambada_openai": {"num_fewshot": 0}},
    },
    30: {"results": {"piqa": {"acc,none": 0.9}}},  # after the exported step: not this export's
}


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    """A base run and a fine-tune of it (base pinned in base.json) evaluated at two steps."""
    root = tmp_path_factory.mktemp("card")
    data = prepare_corpus(str(root / "data"))
    base = str(root / "base")
    checkpoint.save_params(base, Config(model=MODEL, data=DataConfig(path=data)), random_params(MODEL), step=7)
    keep_tokenizer(data, base)
    run = str(root / "sft")
    config = Config(model=MODEL, data=DataConfig(path=data), checkpoint=CheckpointConfig(restore_from=base))
    checkpoint.save_params(run, config, random_params(MODEL, seed=1), step=20)
    storage.write_json_atomic(os.path.join(run, "base.json"), {"restore_from": f"{base}:7", "lora": False})
    keep_tokenizer(data, run)
    os.makedirs(os.path.join(run, "eval"))
    for step, results in EVALS.items():
        with open(os.path.join(run, "eval", f"step_{step}.json"), "w") as f:
            json.dump(results, f)
    return base, run


def test_the_card_has_every_evaluation_result_as_a_model_index_the_hub_parser_reads(fine_tune, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    base, run = fine_tune
    out = tmp_path / "hf"
    assert convert_to_hf.main(["--checkpoint", run, "--out", str(out), "--no-verify"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == f"{base}:7"  # the pinned base, as the run started from it
    name, results = model_index_to_eval_results(metadata_load(out / "README.md")["model-index"])
    assert name == "hf" and card.data.model_name == "hf" and len(card.data.eval_results) == len(results)
    found = {
        (r.task_type, r.dataset_name, r.dataset_type, r.metric_type, r.dataset_args["num_few_shot"]): r.metric_value
        for r in results
    }
    assert found == {
        ("text-generation", "ARC-Easy", "allenai/ai2_arc", "acc", 0): pytest.approx(32.79),
        ("text-generation", "ARC-Easy", "allenai/ai2_arc", "acc_norm", 0): pytest.approx(31.0),
        ("text-generation", "HellaSwag", "Rowan/hellaswag", "acc", 10): pytest.approx(25.65),
        ("text-generation", "HellaSwag", "Rowan/hellaswag", "acc_norm", 10): pytest.approx(27.0),
        ("text-generation", "LAMBADA-OpenAI", "EleutherAI/lambada_openai", "perplexity", 0): pytest.approx(93.78),
        ("text-generation", "LAMBADA-OpenAI", "EleutherAI/lambada_openai", "acc", 0): pytest.approx(18.22),
    }
    text = (out / "README.md").read_text()
    assert "| ARC-Easy | 0 | acc | 32.79 |" in text and "| HellaSwag | 10 | acc | 25.65 |" in text  # the same results


def test_a_run_trained_from_scratch_has_no_base_model(fine_tune, tmp_path):
    from huggingface_hub import ModelCard

    base, _ = fine_tune
    out = tmp_path / "base-hf"
    assert convert_to_hf.main(["--checkpoint", base, "--out", str(out), "--no-verify"]) == 0
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert "base_model" not in data and "model-index" not in data
