"""Generation from a trained model: `cli` (`python -m trainer.generate`), `decode` (prefill into the KV cache, then
sampling on the model's mesh), `sample` (the jitted sampling loop, independent of the model), `stop` (stop strings and
streamed text on the host). The run itself is opened by `trainer.run_folder.load_run`."""
