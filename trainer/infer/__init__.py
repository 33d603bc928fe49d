"""Generation from a trained model: `sample`."""
