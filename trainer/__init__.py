"""Offline trainer: PTB download and batching, Zaremba's configs, training loop, evaluation, CLI."""
