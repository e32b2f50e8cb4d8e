"""Which CTR-model parameters a device personalizes: Algorithm 3 steps only the trainable ones."""

from __future__ import annotations

from torch import nn

SCOPES = ("all", "mlp", "head")


def limit_training(model: nn.Module, scope: str = "all") -> nn.Module:
    """Mark parameters trainable by `scope` (in place): "all" (the paper), "mlp" (the scoring MLP,
    embeddings and attention stay global) or "head" (the MLP's output layer only).

    Fewer personalized parameters leave fewer ways to overfit a handful of local samples.
    """
    if scope not in SCOPES:
        raise ValueError(f"personalize scope {scope!r}: expected one of {', '.join(SCOPES)}")
    head = _head(model) if scope == "head" else ""
    for name, p in model.named_parameters():
        p.requires_grad_(scope == "all" or (scope == "mlp" and name.startswith("mlp."))
                         or (scope == "head" and name.startswith(head)))
    return model


def _head(model: nn.Module) -> str:
    mlp = getattr(model, "mlp", None)
    if not isinstance(mlp, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no `mlp` to take the output layer from")
    last = max(i for i, m in enumerate(mlp) if isinstance(m, nn.Linear))
    return f"mlp.{last}."
