"""tfds: and hf: inputs to prepare: a TFDS dataset built here (ArrayRecord and TFRecord, local and gs://) and
`datasets` datasets (save_to_disk, JSON Lines, Parquet), each prepared in parallel units and decoded back exactly;
resume; errors."""

import json
import os
import random
import subprocess
import sys

import grain
import numpy as np
import pytest
from gcs_emulator import gcs_emulator

from trainer import storage
from trainer.data import DataError
from trainer.data import shards as shards_lib
from trainer.data.text_prepare import prepare
from trainer.data.tokenizer import load_tokenizer
from trainer.data.units import is_validation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = "alpha beta gamma delta def return self import class while None True print value 日本語 ünï 🙂".split()
VAL = 0.2


def make_texts(n, seed):
    """Unique documents of varied length with non-ASCII text; one empty (skipped and counted)."""
    rng = random.Random(seed)
    texts = [
        f"doc {i}:\n  " + " ".join(rng.choice(WORDS) + str(rng.randint(0, 99)) for _ in range(rng.randint(3, 120)))
        for i in range(n)
    ]
    texts[7] = ""
    return texts


def decoded(manifest, out):
    """Every document of the prepared folder as text, per split."""
    tok = load_tokenizer(out)
    result = {}
    for split in ("train", "val"):
        paths = manifest.shard_paths(split)
        source = grain.sources.ArrayRecordDataSource(paths) if paths else []
        docs = []
        for i in range(len(source)):
            ids = shards_lib.decode_record(source[i], manifest.dtype).tolist()
            assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
            docs.append(tok.decode(ids[:-1]))
        result[split] = docs
    return result


def assert_decodes_to(manifest, out, texts, key_of_row=None):
    """The shards hold exactly the non-empty texts; with `key_of_row`, the validation ones are those its key picks."""
    docs = decoded(manifest, out)
    assert sorted(docs["train"] + docs["val"]) == sorted(t for t in texts if t)
    assert manifest.empty_documents_skipped == texts.count("")
    if key_of_row is not None:
        expected = [t for row, t in enumerate(texts) if t and is_validation(key_of_row(row), 0, VAL)]
        assert sorted(docs["val"]) == sorted(expected) and expected


# ---------------------------------------------------------------------------------------------- TFDS


TFDS_TEXTS = make_texts(90, seed=1)
TFDS_TEST = ["one", "two", "three"]


@pytest.fixture(scope="module")
def tfds_dirs(tmp_path_factory):
    """A TFDS dataset defined here, prepared into one data dir as ArrayRecord and into another as TFRecord."""
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds.disable_progress_bar()

    class TinyCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "n": np.int32})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(TFDS_TEXTS), "test": self._generate_examples(TFDS_TEST)}

        def _generate_examples(self, texts):
            for i, text in enumerate(texts):
                yield i, {"text": text, "n": i}

    root = tmp_path_factory.mktemp("tfds")
    dirs = {}
    for file_format in ("array_record", "tfrecord"):
        if file_format == "tfrecord" and not _have("tensorflow"):
            continue  # writing TFRecord needs TensorFlow; the test that reads it skips
        dirs[file_format] = str(root / file_format)
        TinyCorpus(data_dir=dirs[file_format], file_format=file_format).download_and_prepare(
            download_config=tfds.download.DownloadConfig(num_shards=3)
        )
    return dirs


def _have(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _row_order(data_dir):
    """The split's rows in file order (the order prepare reads them in): the text of row i."""
    import tensorflow_datasets as tfds

    source = tfds.builder_from_directory(os.path.join(data_dir, "tiny_corpus", "1.0.0")).as_data_source(split="train")
    return [source[i]["text"].decode() for i in range(len(source))]


@pytest.fixture(scope="module")
def tfds_prepared(tfds_dirs, tmp_path_factory):
    """The ArrayRecord dataset prepared in 2 worker processes, in several units; a tokenizer trained on it."""
    out = str(tmp_path_factory.mktemp("tfds-out") / "ar")
    manifest = prepare(
        ["tfds:tiny_corpus"],
        out,
        vocab_size=400,
        tfds_data_dir=tfds_dirs["array_record"],
        val_fraction=VAL,
        workers=2,
        unit_bytes=8 << 10,
        progress=False,
        verbose=False,
    )
    return out, manifest


def test_tfds_array_record_decodes_back_exactly(tfds_dirs, tfds_prepared):
    out, manifest = tfds_prepared
    assert len(manifest.shards) >= 6  # several units: train + val shards each
    rows = _row_order(tfds_dirs["array_record"])
    assert sorted(rows) == sorted(TFDS_TEXTS)
    assert_decodes_to(manifest, out, rows, key_of_row=lambda row: f"tfds:tiny_corpus:train:{row}")
    assert "tfds:tiny_corpus" in manifest.source


def test_tfds_tfrecord_through_as_dataset_gives_the_same_shards(tfds_dirs, tfds_prepared):
    pytest.importorskip("tensorflow")
    out, manifest = tfds_prepared
    tf_out = os.path.join(os.path.dirname(out), "tfrecord")
    again = prepare(
        ["tfds:tiny_corpus:1.0.0"],
        tf_out,
        tokenizer=os.path.join(out, "tokenizer.model"),
        tfds_data_dir=tfds_dirs["tfrecord"],
        val_fraction=VAL,
        workers=1,
        unit_bytes=8 << 10,
        progress=False,
        verbose=False,
    )
    # Same rows in the same order with the same keys: byte-identical shards whichever format TFDS stored.
    assert again.shards == manifest.shards
    assert_decodes_to(again, tf_out, _row_order(tfds_dirs["array_record"]))


def test_tfds_split_slices_and_resume(tfds_dirs, tfds_prepared, tmp_path, capsys):
    out, _ = tfds_prepared
    part_out = str(tmp_path / "part")
    kwargs = dict(
        tokenizer=os.path.join(out, "tokenizer.model"),
        tfds_data_dir=tfds_dirs["array_record"],
        val_fraction=VAL,
        workers=1,
        unit_bytes=4 << 10,
        progress=False,
    )
    first = prepare(["tfds:tiny_corpus"], part_out, split="train[10:40]+test", verbose=False, **kwargs)
    rows = _row_order(tfds_dirs["array_record"])
    assert sorted(d for docs in decoded(first, part_out).values() for d in docs) == sorted(rows[10:40] + TFDS_TEST)
    shard = os.path.join(part_out, first.shards[0].file)
    os.remove(shard)  # a lost shard: its unit is redone, the others are verified and kept
    untouched = os.path.join(part_out, first.shards[-1].file)
    mtime = os.stat(untouched).st_mtime_ns
    capsys.readouterr()
    second = prepare(["tfds:tiny_corpus"], part_out, split="train[10:40]+test", **kwargs)
    assert "already complete and verified" in capsys.readouterr().out
    assert second.shards == first.shards and os.path.exists(shard)
    assert os.stat(untouched).st_mtime_ns == mtime


def test_tfds_array_record_needs_no_tensorflow(tfds_dirs, tmp_path):
    """With TensorFlow unimportable, ArrayRecord datasets prepare; TFRecord ones fail in one line naming the extra."""
    script = (  # the path finder stops seeing tensorflow: exactly as if it were not installed
        "import sys, importlib.machinery as m\n"
        "class NoTF(m.PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        return None if name.split('.')[0] == 'tensorflow' else super().find_spec(name, path, target)\n"
        "sys.meta_path = [NoTF if f is m.PathFinder else f for f in sys.meta_path]\n"
        "from trainer.data.prepare import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    base = [sys.executable, "-c", script, "--vocab-size", "400", "--no-progress", "--workers", "1"]
    ok = subprocess.run(
        base
        + ["--input", "tfds:tiny_corpus", "--tfds-data-dir", tfds_dirs["array_record"], "--out", str(tmp_path / "ok")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "prepared 89 documents" in ok.stdout
    if "tfrecord" in tfds_dirs:
        bad = subprocess.run(
            base
            + ["--input", "tfds:tiny_corpus", "--tfds-data-dir", tfds_dirs["tfrecord"], "--out", str(tmp_path / "bad")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert "stored as tfrecord" in bad.stderr and ".[tfrecord]" in bad.stderr


@pytest.mark.parametrize(
    "spec, split, field, message",
    [
        ("tfds:nope", "train", "text", "not prepared in"),
        ("tfds:tiny_corpus:train", "train", "text", "is a version such as 1.0.0"),
        ("tfds:tiny_corpus:2.0.0", "train", "text", "no prepared version 2.0.0 in"),
        ("tfds:tiny_corpus", "validation", "text", "bad --split 'validation'"),
        ("tfds:tiny_corpus", "train", "body", "no feature 'body' (features: n, text;"),
    ],
)
def test_tfds_errors_are_one_line(tfds_dirs, tmp_path, spec, split, field, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("[", r"\[")):
        prepare(
            [spec],
            str(tmp_path / "out"),
            vocab_size=400,
            tfds_data_dir=tfds_dirs["array_record"],
            split=split,
            text_field=field,
            progress=False,
            verbose=False,
        )


def test_tfds_data_dir_on_gcs_gives_the_same_shards(tfds_dirs, tfds_prepared):
    out, manifest = tfds_prepared
    local_dir = tfds_dirs["array_record"]
    with gcs_emulator() as gcs:
        data_dir = gcs.url("tfds")
        for folder, _, names in os.walk(local_dir):
            for name in names:
                path = os.path.join(folder, name)
                storage.put_file(path, storage.join(data_dir, os.path.relpath(path, local_dir)))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer.data.prepare",
                "--input",
                "tfds:tiny_corpus",
                "--tfds-data-dir",
                data_dir,
                "--out",
                gcs.url("prepared"),
                "--tokenizer",
                os.path.join(out, "tokenizer.model"),
                "--val-fraction",
                str(VAL),
                "--workers",
                "2",
                "--no-progress",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ.copy(),
        )
        assert result.returncode == 0, result.stderr
        remote = shards_lib.read_manifest(gcs.url("prepared"))
        remote_docs = decoded(remote, gcs.url("prepared"))
    # One unit here (the default unit size), several in the local run: the same documents in the same splits.
    local_docs = decoded(manifest, out)
    assert {k: sorted(v) for k, v in remote_docs.items()} == {k: sorted(v) for k, v in local_docs.items()}
    assert "prepared 89 documents" in result.stdout


# ---------------------------------------------------------------------------------------------- HF datasets


HF_TEXTS = make_texts(70, seed=2)


@pytest.fixture(scope="module")
def hf_inputs(tmp_path_factory):
    """The same rows as a saved Dataset, a saved DatasetDict (train + validation), JSON Lines and Parquet files."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    cache = str(root / "cache")  # load_dataset's Arrow conversions go here, not to the home folder
    saved_env = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = cache  # for the worker processes
    saved_config = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = cache  # for this one, which imported datasets already
    datasets.disable_progress_bars()
    rows = [{"text": t, "id": i} for i, t in enumerate(HF_TEXTS)]
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(5))}).save_to_disk(str(root / "saved_dict"))
    (root / "jsonl").mkdir()
    for part in range(2):
        with open(root / "jsonl" / f"part{part}.jsonl", "w", encoding="utf-8") as f:
            for row in rows[part * 35 : (part + 1) * 35]:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    ds.to_parquet(str(root / "rows.parquet"))
    yield root
    datasets.config.HF_DATASETS_CACHE = saved_config
    if saved_env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = saved_env


@pytest.fixture(scope="module")
def hf_prepared(hf_inputs):
    """The save_to_disk Dataset prepared in 2 worker processes, in several units; a tokenizer trained on it."""
    out = str(hf_inputs / "out-saved")
    manifest = prepare(
        [f"hf:{hf_inputs / 'saved'}"],
        out,
        vocab_size=400,
        val_fraction=VAL,
        workers=2,
        unit_bytes=4 << 10,
        progress=False,
        verbose=False,
    )
    return out, manifest


def test_hf_save_to_disk_decodes_back_exactly(hf_prepared):
    out, manifest = hf_prepared
    assert len(manifest.shards) >= 4
    assert_decodes_to(manifest, out, HF_TEXTS, key_of_row=lambda row: f"hf:saved:train:{row}")


@pytest.mark.parametrize(
    "path, split, texts",
    [
        ("saved_dict", "validation", HF_TEXTS[:5]),
        ("saved_dict", "train", HF_TEXTS),
        ("jsonl", "train", HF_TEXTS),  # a folder of .jsonl files through load_dataset("json")
        ("jsonl/*.jsonl", "train[:50%]", HF_TEXTS[:35]),  # a glob, with a split slice
        ("rows.parquet", "train", HF_TEXTS),  # load_dataset("parquet")
    ],
)
def test_hf_dataset_dict_json_and_parquet(hf_inputs, hf_prepared, tmp_path, path, split, texts):
    out, _ = hf_prepared
    manifest = prepare(
        [f"hf:{hf_inputs / path}"],
        str(tmp_path / "out"),
        tokenizer=os.path.join(out, "tokenizer.model"),
        split=split,
        val_fraction=VAL,
        workers=1,
        unit_bytes=4 << 10,
        progress=False,
        verbose=False,
    )
    assert_decodes_to(manifest, str(tmp_path / "out"), texts)


def test_hf_resume_verifies_and_a_changed_dataset_is_redone(hf_inputs, hf_prepared, tmp_path, capsys):
    import datasets

    out, _ = hf_prepared
    folder = str(tmp_path / "saved")
    datasets.Dataset.from_list([{"text": t} for t in HF_TEXTS]).save_to_disk(folder)
    kwargs = dict(
        tokenizer=os.path.join(out, "tokenizer.model"), val_fraction=VAL, workers=1, unit_bytes=4 << 10, progress=False
    )
    first = prepare([f"hf:{folder}"], str(tmp_path / "out"), verbose=False, **kwargs)
    capsys.readouterr()
    again = prepare([f"hf:{folder}"], str(tmp_path / "out"), **kwargs)
    assert again.shards == first.shards
    assert "already complete and verified" in capsys.readouterr().out
    changed = [t.upper() for t in HF_TEXTS]  # same size, other content: the fingerprint changes
    datasets.Dataset.from_list([{"text": t} for t in changed]).save_to_disk(folder + "-new")
    os.rename(folder, folder + "-old")
    os.rename(folder + "-new", folder)
    third = prepare([f"hf:{folder}"], str(tmp_path / "out"), verbose=False, **kwargs)
    assert_decodes_to(third, str(tmp_path / "out"), changed)


@pytest.mark.parametrize(
    "path, split, field, message",
    [
        ("saved_dict", "test", "text", "no split 'test' (splits: train, validation"),
        ("saved", "train", "id", "column 'id' holds"),
        ("saved", "train", "body", "no column 'body'"),
        ("saved", "validation", "text", "single Dataset without splits"),
        ("notes", "train", "text", "expected a save_to_disk folder or only JSON"),
    ],
)
def test_hf_errors_are_one_line(hf_inputs, tmp_path, path, split, field, message):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("plain text")
    root = tmp_path if path == "notes" else hf_inputs
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        prepare(
            [f"hf:{root / path}"],
            str(tmp_path / "out"),
            vocab_size=400,
            split=split,
            text_field=field,
            progress=False,
            verbose=False,
        )


def test_hf_cli_and_hub_names_stay_offline(hf_inputs, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.data.prepare",
            "--input",
            "hf:some-owner/some-corpus",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2 and result.stderr.startswith(
        "error: cannot open Hugging Face dataset some-owner/some-corpus"
    )
    assert result.stderr.count("\n") == 1 and not os.path.exists(tmp_path / "out" / "manifest.json")


def test_missing_packages_name_their_extra(tmp_path):
    """Without tensorflow_datasets / datasets installed, tfds: and hf: inputs fail in one line naming the extra."""
    script = (
        "import sys, importlib.machinery as m\n"
        "class Hide(m.PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        hidden = name.split('.')[0] in ('tensorflow_datasets', 'datasets')\n"
        "        return None if hidden else super().find_spec(name, path, target)\n"
        "sys.meta_path = [Hide if f is m.PathFinder else f for f in sys.meta_path]\n"
        "from trainer.data import DataError\n"
        "from trainer.data.text_prepare import prepare\n"
        "for spec in sys.argv[2:]:\n"
        "    try:\n"
        "        prepare([spec], sys.argv[1], progress=False, verbose=False)\n"
        "    except DataError as e:\n"
        "        print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out"), "tfds:c4/en", "hf:owner/name"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        '--input tfds:... needs TensorFlow Datasets: pip install -e ".[tfds]"',
        '--input hf:... needs Hugging Face datasets: pip install -e ".[datasets]"',
    ]
