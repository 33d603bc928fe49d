"""Evaluation of a model: `loss` (validation loss and perplexity on the held-out split)."""
