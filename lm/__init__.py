"""The language model shared by the trainer and the service: vocabulary, network, checkpoint format, scoring."""

from lm.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from lm.model import LSTMLanguageModel, ModelConfig
from lm.vocab import EOS, UNK, Vocabulary

__all__ = [
    "EOS",
    "UNK",
    "Checkpoint",
    "CheckpointError",
    "LSTMLanguageModel",
    "ModelConfig",
    "Vocabulary",
    "load_checkpoint",
    "save_checkpoint",
]
