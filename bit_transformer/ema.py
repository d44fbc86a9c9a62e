"""An exponential moving average of the weights (``train.ema_decay``), for evaluation and export.

After every optimizer update: ``ema <- ema + (1 - d) * (w - ema)`` with ``d = min(decay, (1 + n) / (10 + n))``,
``n`` the updates averaged so far. The warm-up term keeps the average from clinging to the random
initialisation in short runs (the usual form, e.g. TensorFlow's ``ExponentialMovingAverage(num_updates=...)``).
Floating-point entries of the state dict are averaged (parameters and float buffers); others are copied.

The training weights stay the model's own (resume continues from them exactly); the average lives beside them:
in a checkpoint as ``ema.<name>`` tensors of ``extra.safetensors``, which ``checkpoint.load_model`` (evaluate,
generate, export-int8, the server's model tools) loads in place of the training weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

PREFIX = "ema."


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = float(decay), 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def rate(self) -> float:
        """This update's decay (the warm-up form); the next ``update`` uses it."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.rate()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach(), 1.0 - d)
            else:
                s.copy_(v)
        self.updates += 1

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holding the averaged weights inside the block, its own weights again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The checkpoint's ``ema.*`` tensors."""
        return {PREFIX + k: v for k, v in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Restore from a checkpoint's tensors (missing: keep the current weights as the start)."""
        for k in self.shadow:
            if PREFIX + k in tensors:
                self.shadow[k].copy_(tensors[PREFIX + k])
        self.updates = int(updates)


def ema_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged model's state dict among a checkpoint's extra tensors ({} when it kept none)."""
    return {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
