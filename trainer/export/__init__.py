"""Ship a run: `hf` (the export command), `safetensors`, `tokenizer`, `mapping` (our params ↔ HF names), `gguf`
(llama.cpp), `parity` (the checks every export passes), `import_hf` (the way back)."""
