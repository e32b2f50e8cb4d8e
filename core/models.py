"""The CTR model (DIN), the on-device sample classifier, and their weights as bytes."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from core.features import FeatureSpace
from core.tensors import classifier_width, din_inputs

EMBEDDING_STD = 0.1  # small init: with 3-dim embeddings, N(0, 1) swamps the MLP at the start

M = TypeVar("M", bound=nn.Module)


def _mlp(sizes: Sequence[int], act: type[nn.Module]) -> nn.Sequential:
    """Linear layers of `sizes` with `act` between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def init_weights(module: nn.Module, seed: int) -> None:
    """(Re-)initialise every weight from one private generator, so `seed` alone fixes the model.

    Linear layers get PyTorch's default scheme; embeddings N(0, EMBEDDING_STD).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.in_features)
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, EMBEDDING_STD, generator=gen)
            elif any(True for _ in m.parameters(recurse=False)):
                raise TypeError(f"no init rule for {type(m).__name__}: the seed would not fix its weights")


def _weighted_mean(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Mean over the second-to-last axis of `values` with `din_inputs`' mean weights: one batched matmul."""
    return (weights @ values).squeeze(-2)


def _run(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`layers(x)` through the functional ops the modules call (same kernels, same numbers): a small
    model's step is dominated by per-module call overhead, not arithmetic."""
    for layer in layers:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, layer.weight, layer.bias)
        elif isinstance(layer, nn.Sigmoid):
            x = torch.sigmoid(x)
        elif isinstance(layer, nn.ReLU):
            x = torch.relu(x)
        else:
            x = layer(x)
    return x


def _lookup(table: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    """Embedding rows for `idx`; index_select's backward is ~3x faster than embedding's on CPU."""
    return table.weight.index_select(0, idx.reshape(-1)).view(*idx.shape, table.embedding_dim)


class DIN(nn.Module):
    """Deep Interest Network (Zhou et al. 2018) as CoDA deploys it: small embeddings, one logit.

    An item is its embedding next to the mean of its tag embeddings (2·emb_dim). The local
    activation unit scores each behaviour against the target from [q, k, q−k, q·k]; the
    sequence is the weighted *sum* (no softmax, as in DIN, so interest intensity survives).
    """

    def __init__(
        self,
        space: FeatureSpace,
        emb_dim: int = 3,
        mlp: Sequence[int] = (32, 16),
        attention: Sequence[int] = (16,),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.space = space
        with torch.random.fork_rng(devices=[]):  # default init draws from the global RNG: undo that
            self.item_emb = nn.Embedding(space.item_buckets, emb_dim)
            self.tag_emb = nn.Embedding(space.tag_buckets, emb_dim)
            self.profile_emb = nn.Embedding(space.profile_buckets, emb_dim)
            d = 2 * emb_dim
            self.attention = _mlp([4 * d, *attention, 1], nn.Sigmoid)
            self.mlp = _mlp([2 * d + emb_dim, *mlp, 1], nn.ReLU)
        init_weights(self, seed)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits for `din_inputs(collate(...))`; a plain `collate` batch is laid out first."""
        x = batch if "items" in batch else din_inputs(batch)
        # target in slot 0, behaviours after it: one embedding lookup per table, not two
        tag_mean = _weighted_mean(x["tag_weights"], _lookup(self.tag_emb, x["tags"]))
        e = torch.cat([_lookup(self.item_emb, x["items"]), tag_mean], dim=-1)
        q, k = e[:, :1].expand_as(e[:, 1:]), e[:, 1:]  # [n, L, d] each
        weights = _run(self.attention, torch.cat([q, k, q - k, q * k], dim=-1)).squeeze(-1)
        weights = weights * x["seq_mask"]  # padding weighs 0
        interest = (weights.unsqueeze(1) @ k).squeeze(1)
        profile = _weighted_mean(x["profile_weights"], _lookup(self.profile_emb, x["profile"]))
        logits = _run(self.mlp, torch.cat([e[:, 0], interest, profile], dim=-1))
        return logits.squeeze(-1)


class SampleClassifier(nn.Module):
    """Algorithm 2's two-class model: DIN with embeddings and attention pruned.

    Input is behaviour-sequence features only (`core.tensors.classifier_features`: the
    sequence tag histogram and the sequence length); output one logit, 1 = "like local".
    """

    def __init__(self, space: FeatureSpace, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            self.net = _mlp([classifier_width(space), hidden, 1], nn.ReLU)
        init_weights(self, seed)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = _run(self.net, features)
        return logits.squeeze(-1)


def state_to_bytes(module: nn.Module) -> bytes:
    """The module's weights as bytes (torch.save format), for the wire or a model file."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def state_from_bytes(module: M, data: bytes) -> M:
    """Load weights from `state_to_bytes` into `module` (in place) and return it.

    `weights_only=True`: bytes from the wire cannot run code. Shapes must match `module`.
    """
    state = torch.load(io.BytesIO(data), weights_only=True)
    module.load_state_dict(state)
    return module


def relative_change(state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> float:
    """‖θ − θ0‖ / ‖θ0‖ over every floating-point tensor: how far personalization moved a model."""
    diff = total = 0.0
    for name, b in base.items():
        if b.is_floating_point():
            diff += float((state[name].double() - b.double()).pow(2).sum())
            total += float(b.double().pow(2).sum())
    return (diff / total) ** 0.5 if total else 0.0
