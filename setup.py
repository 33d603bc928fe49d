"""Install: `pip install -e .` (CPU), plus extras: hf (export), mlx, onnx, llama (export runtimes), eval, parquet, tfds,
tpu, gpu, gpu-compile, cloud, wandb, dev."""

from setuptools import find_packages, setup

# transformers 5: the exporters write `rope_parameters` and load models with `dtype=`.
HF = ["torch>=2.3", "transformers>=5.0", "safetensors>=0.4", "gguf>=0.19", "accelerate>=1.0"]
PARQUET = ["pyarrow>=15"]
WANDB = ["wandb>=0.31"]  # log.wandb; the version its offline-history test reads
# lm-evaluation-harness: `trainer.eval` subclasses its TemplateLM and reads its task files; its API moves between minor
# releases, so the range is the one tested.
EVAL = ["lm-eval>=0.4.13,<0.5"]
# Input readers of prepare. tfds: datasets stored as ArrayRecord / Parquet are read without TensorFlow (41 MB);
# tfrecord: TFRecord-stored ones (e.g. C4 as MaxText prepares it) need TensorFlow itself (tensorflow-cpu, 1.3 GB).
TFDS = ["tensorflow-datasets>=4.9.10"]
TFRECORD = TFDS + ["tensorflow-cpu>=2.21"]
DATASETS = ["datasets>=5.2"]  # hf: inputs
# Export runtimes (`--format mlx|onnx|gguf` and the tests that prove each file in its runtime). mlx-lm's `cpu` extra
# brings mlx's Linux CPU wheels (plain mlx-lm installs mlx on macOS only); llama-cpp-python compiles llama.cpp from
# source (minutes), so it stays out of dev.
MLX = ["mlx-lm[cpu]>=0.32.2,<0.33"]
ONNX = ["onnx>=1.23,<2", "onnxruntime>=1.31,<2"]
LLAMA = ["llama-cpp-python>=0.3.36,<0.4"]
# LoRA adapters exported with --adapter-only load with peft (tests load them onto the base export).
LORA = HF + ["peft>=0.21.2,<0.22"]

setup(
    name="trainer",
    version="0.1.0",
    description="A readable LLaMA pretraining framework on JAX: one jit code path from a laptop to a TPU pod.",
    python_requires=">=3.10",
    packages=find_packages(include=["trainer", "trainer.*", "launch"]),
    install_requires=[
        # APIs of this stack move fast: the ranges are the ones tested (docs/pitfalls.md lists what they rely on).
        # jax 0.10.2 and 0.12.0.1 (Python >= 3.12 only) are tested; on a CPU 0.12 trains faster (docs/bench.md)
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "array-record>=0.8.6",
        "sentencepiece>=0.2",
        # Hugging Face tokenizer folders (tokenizer.json: byte-level BPE such as GPT-2's and StarCoder's) are read with
        # it directly, so a `.[tpu]` worker without transformers prepares, trains, samples and generates with them
        "tokenizers>=0.20",
        "gcsfs>=2024.6",
        "pyyaml>=6",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "numpy>=1.26",
        "matplotlib>=3.8",
        # imported directly, though the packages above bring them too
        "fsspec>=2024.6",
        "absl-py>=2.0",
        "ml-dtypes>=0.4",
        "portpicker>=1.6",  # launch/local.py
        "jinja2>=3.1",  # chat templates (trainer.data.chat), rendered as transformers renders them
        "zstandard>=0.22",  # prepare reads .zst inputs as a stream (trainer.data.compressed)
    ],
    extras_require={
        "hf": HF,
        "parquet": PARQUET,
        "eval": EVAL,
        "wandb": WANDB,
        "tfds": TFDS,
        "tfrecord": TFRECORD,
        "datasets": DATASETS,
        "mlx": MLX,
        "onnx": ONNX,
        "llama": LLAMA,
        "lora": LORA,
        "tpu": ["jax[tpu]>=0.10.2,<0.13"],  # the libtpu matching the jax installed (0.12: libtpu 0.0.50.1)
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],  # training on NVIDIA GPUs; jax 0.12's CUDA runtime not tested
        # `--dry-run --target 2xl40s` on a machine without a GPU: XLA's GPU compiler (the CUDA plugin, matched to the
        # installed jax) and CUDA's ptxas, ~580 MB; no driver, no cuDNN (tested with jax 0.10.2 and 0.12.0.1)
        "gpu-compile": ["jax[cuda12-local]>=0.10.2,<0.13", "nvidia-cuda-nvcc-cu12>=12.6"],
        "cloud": ["google-cloud-tpu>=1.18"],
        "dev": HF
        + PARQUET
        + EVAL
        + WANDB
        + TFDS
        + DATASETS
        + MLX
        + ONNX
        + LORA
        + [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "gcp-storage-emulator>=2024.8",
            "google-cloud-tpu>=1.18",
            "psutil>=5.9",
            # .ci/lint: exact versions, since a new ruff or mypy release adds rules and changes formatting
            "ruff==0.17.6",
            "mypy==2.4.1",
            "types-PyYAML>=6.0.12",
        ],
    },
)
