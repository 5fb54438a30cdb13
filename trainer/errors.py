"""The trainer's one error type: the CLI prints its message on one line and exits non-zero."""


class TrainerError(Exception):
    """Bad input to the trainer (missing data, wrong vocabulary, unknown config, ...)."""
