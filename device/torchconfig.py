"""Torch set-up for device work: the process's intra-op threads, and Algorithm 3's training settings."""

from __future__ import annotations

import torch

from core.training import TrainConfig
from streams.settings import Settings

_torch_configured = False


def device_train_config(s: Settings, seed: int) -> TrainConfig:
    """Algorithm 3's optimiser and gate from the settings (the offline engine uses the same)."""
    return TrainConfig(lr=s.device_learning_rate, batch_size=s.train_batch, epochs=s.train_epochs, seed=seed,
                       one_class_gate=s.one_class_gate, gate=s.gate, patience=s.train_patience)


def configure_torch(threads: int) -> None:
    """Set torch's intra-op threads once per process (deliberately: devices share a core budget)."""
    global _torch_configured
    if not _torch_configured:
        torch.set_num_threads(max(1, threads))
        _torch_configured = True
