"""Text → tokenized ArrayRecord shards (`python -m trainer.data.prepare`) → Grain batches (`pipeline`).

Preparing a folder:
- `prepare`: the command and `ensure_prepared` (a recipe's corpus on its first run), for both formats
- `text_prepare`: the text preparer, `prepare(...)`
- `chat_prepare`: conversations rendered through a chat template, with a loss mask on the replies
- `folder`: one tokenizer per prepared folder, for text and chat alike
- `sources` (files, globs, the stdlib corpus), `tfds_source`, `hf_source` (datasets): `--input` → `documents`
- `documents`: an input `Item` and the `Document`s it yields
- `compressed` (.gz/.zst/.bz2/.xz streams), `lines` (JSONL byte ranges cut at lines), `records` (field maps, row
  templates)
- `units`: parallel work units, each resumable; `shards`: ArrayRecord shards and `manifest.json`
- `integrity`: shard checks (`--verify`) and the one-line errors for a damaged shard
- `conversations`: chat corpora (JSONL formats, the built-in stdlib Q&A); `chat`: chat templates and loss masks
Tokenizers: `tokenizer_base` (the interface), `tokenizer` (SentencePiece; loading any), `hf_tokenizer` (Hugging Face
folders); `bos`: whether the run's documents start with BOS, recorded beside the run.
Training: `pipeline` (row streams, shuffling, batches), `packing` (concatenation or packing), `shard_source` (the
shards as one record source whose errors name the file), `mixture` (weighted sources, stages read once per job),
`synthetic` (random tokens, no shards: tokens/s on a fresh machine).

`DataError` (trainer.errors) is re-exported here: `from trainer.data import DataError`.
"""

from trainer.errors import DataError  # noqa: F401
