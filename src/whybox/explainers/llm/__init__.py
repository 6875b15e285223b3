"""Explanations for language models: sparse-autoencoder features, generation attribution."""
