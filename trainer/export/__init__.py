"""Ship a run, and bring one in.

- `command`: `python -m trainer.convert_to_hf`, every format: arguments, loading, dispatch, parity, the card
- `hf`: the Hugging Face folder writer and its parity check; `safetensors` (streamed files, shard plans),
  `mapping` (our params ↔ HF names and LlamaConfig), `tokenizer` (the run's tokenizer as an HF one)
- `formats`: GGUF, MLX and ONNX through their own modules: `gguf` (+ `gguf_vocab`, `gguf_rope`, `gguf_quantize`,
  `gguf_llama_cpp`: llama.cpp's vocabulary, RoPE, quantizer and runtime), `modelfile` (Ollama), `mlx`, `onnx`
- `peft`: a LoRA run's adapters as a PEFT folder
- `card` (the README.md model card: its facts gathered from the run), `card_text` (their Markdown) and
  `model_index` (the evaluation results as Papers-with-Code `model-index`)
- `parity`: the checks every export passes (weights, logits, tokenizer)
- `import_hf`: the way back (`python -m trainer.convert_from_hf`)
"""
