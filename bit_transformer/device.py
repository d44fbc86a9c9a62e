"""Where and in which precision a run computes: the device (CUDA under torchrun's local rank, else CPU), bf16
autocast where the device supports it, and the reason for each choice so the plan can report it (tasks 3, 8).
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA device is available: use device='cpu' or 'auto'")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def resolve_precision(amp: str, device: torch.device) -> tuple[str, str]:
    """('bf16'|'fp32', reason). bf16 only where autocast supports it on this device."""
    if amp != "bf16":
        return "fp32", "amp='none' requested"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32", "this GPU has no bf16 support; running fp32"
    if not torch.amp.is_autocast_available(device.type):
        return "fp32", f"autocast is not available on {device.type}; running fp32"
    return "bf16", f"bf16 autocast on {device.type}"


def autocast(device: torch.device, precision: str):
    """The autocast context for the chosen precision (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
