"""Selective ``torch.compile``: each block's attention and MLP, compiled in place, undone on failure.

Every decision comes with its reason (task 8), so a run that could not compile says why and runs eagerly.
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch import nn


def _import_dynamo():
    with warnings.catch_warnings():  # torch's own import-time deprecation notices are not ours to show
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._dynamo as dynamo
    return dynamo


def compile_support() -> tuple[bool, str]:
    """Whether torch.compile can run here, and why not when it cannot (task 8)."""
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < (2, 1):
        return False, f"torch {torch.__version__} < 2.1 has no usable torch.compile"
    try:
        dynamo = _import_dynamo()
    except Exception as exc:  # pragma: no cover - broken installs
        return False, f"torch._dynamo failed to import: {exc}"
    if not dynamo.is_dynamo_supported():
        return False, f"torch {torch.__version__} does not support dynamo on Python {sys.version.split()[0]}"
    return True, f"torch {torch.__version__}, Python {sys.version.split()[0]}: dynamo supported"


def compile_blocks(model: nn.Module, requested: bool, warmup=None) -> tuple[bool, str]:
    """Compile each block's attention and MLP submodules in place (selective compile).

    In-place ``Module.compile`` keeps parameter names, so checkpoints are unaffected. Compiling the
    submodules (not whole blocks) serves every stack: plain, checkpointed, reversible and ACT all call
    them. ``warmup()`` runs one forward/backward so that compile errors surface here; on any failure
    compilation is undone and the run continues eagerly with the reason reported.
    """
    if not requested:
        return False, "not requested (compile=false)"
    ok, why = compile_support()
    if not ok:
        return False, f"skipped: {why}"
    targets = [m for block in getattr(model, "blocks", []) for m in (getattr(block, "attn", None),
                                                                      getattr(block, "mlp", None)) if m is not None]
    if not targets:
        return False, "skipped: model has no blocks with attn/mlp submodules to compile"
    try:
        with warnings.catch_warnings():  # torch's import-time deprecation notices are not ours to show
            warnings.simplefilter("ignore", DeprecationWarning)
            for m in targets:
                m.compile(dynamic=None)
        if warmup is not None:
            warmup()
    except Exception as exc:
        for m in targets:
            m._compiled_call_impl = None  # undo Module.compile: back to eager
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"skipped: torch.compile failed ({type(exc).__name__}: {first[:200]}); running eagerly"
    return True, f"compiled attn+mlp of {len(targets) // 2} blocks ({why})"
