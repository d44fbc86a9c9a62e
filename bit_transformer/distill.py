"""Distillation (``train.teacher``): a frozen teacher checkpoint's per-bit predictions as a second target.

Micro-batch loss with a teacher, alpha = ``train.distill_weight``, T = ``train.distill_temperature``:

    alpha * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T)) + (1 - alpha) * CE(data)

averaged over the bit positions of the window, in nats per bit (T^2 keeps the KL's gradient on the CE's scale
as T grows, Hinton et al. 2015). The distributions are the per-bit next-bit ones both model kinds return:
flat and framed models share the ``forward(bits) -> (B, T, 2)`` contract (a framed model's per-bit logits are
the exact conditionals of its byte distribution), so any causal next-bit teacher can teach any causal student
whose windows it can read: flat to framed, framed to flat, wider to narrower, deeper to shallower.

The teacher is loaded once (its EMA weights when its run kept them, as ``evaluate`` uses), put in eval mode
(no dropout: its forward consumes no random numbers) and frozen. Its path is pinned to the resolved checkpoint
directory, and each student checkpoint records path, label and a hash of the weights, so a resumed run uses
the very same teacher or says why not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ModelConfig, TrainConfig


@dataclass
class Teacher:
    """A frozen teacher model and where it came from; ``mix`` turns a CE into the distillation loss."""

    model: torch.nn.Module
    path: str  # the resolved checkpoint directory
    label: str  # '<run>/<name>'
    sha256: str  # of its weights (``weights_sha256``)

    def brief(self, train: TrainConfig) -> str:
        """How plans name it: ``<run>/<name> sha256:<12 hex>, alpha=.., T=..``."""
        return (f"{self.label} sha256:{self.sha256[:12]}, alpha={train.distill_weight:g}, "
                f"T={train.distill_temperature:g}")

    def record(self) -> dict[str, str]:
        """What a student checkpoint stores about its teacher."""
        return {"path": self.path, "label": self.label, "sha256": self.sha256}

    def mix(self, inputs: torch.Tensor, student_logits: torch.Tensor, ce: torch.Tensor,
            train: TrainConfig) -> tuple[torch.Tensor, float]:
        """(alpha x KL + (1 - alpha) x ce, the KL as a float) for one micro-batch's student logits."""
        with torch.no_grad():
            target = self.model(inputs).logits
        kl = distill_kl(student_logits, target, train.distill_temperature)
        alpha = train.distill_weight
        return (1.0 - alpha) * ce + alpha * kl, float(kl.detach())

    def check_resume(self, saved: dict | None) -> None:
        """Refuse to resume a distilled run with different teacher weights (the loss would change mid-run)."""
        if saved and saved.get("sha256") and saved["sha256"] != self.sha256:
            raise ValueError(f"train.teacher: the checkpoint's run distilled from {saved.get('label')!r} "
                             f"(sha256 {saved['sha256'][:12]}), but {self.label!r} has different weights "
                             f"(sha256 {self.sha256[:12]}); set train.teacher to {saved.get('path')!r} to resume, "
                             "or start a new run (--out) with this teacher")


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 x KL(teacher || student) of the tempered per-bit distributions, mean over bit positions (nats)."""
    n = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, n) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, n) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of a model's weights (names, dtypes, shapes and bytes), independent of how they were stored."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_compatible(teacher: ModelConfig, student: ModelConfig) -> None:
    """Raise (naming train.teacher and the fix) when the teacher cannot score the student's windows."""
    if not teacher.causal:
        raise ValueError("train.teacher is a bidirectional (denoising) model: its per-bit outputs are not next-bit "
                         "predictions; use a causal next-bit checkpoint (model.causal=true) as the teacher")
    if teacher.max_seq_len < student.max_seq_len:
        raise ValueError(f"train.teacher reads at most {teacher.max_seq_len} bits (its max_seq_len) but the "
                         f"student trains on windows of {student.max_seq_len}: set model.max_seq_len <= "
                         f"{teacher.max_seq_len}, or use a teacher with a longer context")


def load_teacher(train: TrainConfig, student: ModelConfig, device: torch.device) -> Teacher:
    """The frozen teacher of ``train.teacher`` on ``device``; errors name the field, the file and the fix."""
    from .checkpoint import CheckpointDamaged, checkpoint_label, load_model, resolve_checkpoint

    where = train.teacher
    try:
        ckpt = resolve_checkpoint(where)
    except FileNotFoundError:
        raise ValueError(f"train.teacher: no checkpoint at {where!r}; give a checkpoint directory "
                         "(<run>/checkpoints/<name>) or a run directory whose checkpoints/latest names one") from None
    try:
        model, _ = load_model(ckpt, device)  # the EMA weights when the teacher's run kept them
    except CheckpointDamaged as err:
        raise ValueError(f"train.teacher: {err}") from err
    except ValueError as err:  # not our format, or weights that do not match their config
        raise ValueError(f"train.teacher: {ckpt} cannot be loaded as a teacher: {err}") from err
    check_compatible(model.cfg, student)
    model.eval().requires_grad_(False)
    return Teacher(model, str(ckpt.resolve()), checkpoint_label(ckpt), weights_sha256(model))
