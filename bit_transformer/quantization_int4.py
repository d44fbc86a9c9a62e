"""INT4 export: per-group 4-bit weights for the block linears, loaded back for CPU inference.

The rule and the packing are in int4.py (shared with 4-bit QAT). What the artifact holds:

- the block linears INT8 quantizes (``attn.qkv``, ``attn.out``, ``mlp.*``; quantization.quant_targets): 4-bit codes
  packed two per byte (``<name>.weight.int4``, uint8 ``[out, in/2]``), ``.weight.scale`` (float32) and
  ``.weight.zero_point`` (uint8), one per ``group_size`` weights of a row;
- embeddings: int8 per row, exactly as INT8 stores them (look-up tables, no matmul to speed up; their int8
  error is ~1/16 of int4's, and the position table is a big share of a small model);
- everything else float32 (norms, biases, the 2-way head, ACT halting units: < 1% of the weights).

``model.int4.safetensors`` + ``config.json`` (no pickle), written like the INT8 artifact (quantization.write_artifact).

Two ways to run the loaded linears (``backend``):

- ``dequant`` (default): the weights are dequantized once at load to float32 and run through F.linear, so the
  loaded model computes exactly ``(q - zero_point) * scale``; speed and RAM are fp32's, the file is ~1/6.
- ``kernel``: torch's CPU int4 matmul (``aten._weight_int4pack_mm_for_cpu``) on bf16 activations; the weights
  stay 4-bit in RAM. Slower than fp32 at these widths on the CPUs measured (docs/benchmarks.md, INT4); the
  numbers differ from ``dequant`` by bf16 rounding of the activations.

torchao 0.18 was tried first (docs/benchmarks.md, INT4): its int4 weight-only CPU layout is gone and its packed
low-bit CPU kernels are not in the x86 wheel, which leaves unpacked int8 storage, nothing over ``dequant``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, RunConfig, stored_run_config
from .export import Int8Info
from .int4 import check_group_size, dequantize_groups, pack_nibbles, quantize_groups, unpack_nibbles
from .model import BitTransformerLM
from .quantization import (
    _is_int8_linear,
    _qentries,
    artifact_meta,
    build_quantized,
    fp32_size,
    quant_targets,
    quantize_rows,
    read_artifact,
    read_meta,
    write_artifact,
)

FORMAT = "bit-transformer-int4"
VERSION = 1
WEIGHTS = "model.int4.safetensors"
DEFAULT_GROUP_SIZE = 32  # measured: docs/benchmarks.md, INT4 (64 and 128 lose more bits per byte)
Int4Backend = Literal["dequant", "kernel"]
KERNEL_GROUP_SIZES = (32, 64, 128, 256)  # what aten._weight_int4pack_mm_for_cpu accepts


class Int4Linear(nn.Module):
    """A linear with per-group int4 weights (packed buffers kept, so the model can be exported again)."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None,
                 backend: Int4Backend = "dequant"):
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        self.group_size, self.backend = self.in_features // scale.shape[1], backend
        self.register_buffer("weight_int4", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero)
        self.register_buffer("bias", bias)
        codes = unpack_nibbles(packed)
        if backend == "dequant":
            self.register_buffer("_w", dequantize_groups(codes, scale, zero), persistent=False)
        else:  # the kernel computes (q - 8) * scale + zero: fold the zero point into that float zero
            if self.group_size not in KERNEL_GROUP_SIZES:
                raise ValueError(f"backend='kernel' needs group_size in {KERNEL_GROUP_SIZES} (torch's int4 "
                                 f"kernel), this artifact has {self.group_size}: use backend='dequant'")
            self.register_buffer("_kw", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int(), 1),
                                 persistent=False)
            sz = torch.stack([scale, (8.0 - zero.float()) * scale], dim=-1)  # [out, groups, 2]
            self.register_buffer("_sz", sz.transpose(0, 1).contiguous().bfloat16(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "dequant":
            return F.linear(x, self._w.to(x.dtype), self.bias)
        flat = x.reshape(-1, self.in_features).bfloat16()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self._kw, self.group_size, self._sz).to(x.dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def int4_tensors(model: BitTransformerLM, group_size: int = DEFAULT_GROUP_SIZE, *, symmetric: bool = False
                 ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Every tensor of the INT4 artifact and its layout (which modules are quantized)."""
    linears, embeddings = quant_targets(model)
    out: dict[str, torch.Tensor] = {}
    for name in linears:
        m = model.get_submodule(name)
        if _is_int8_linear(m) or isinstance(m, Int4Linear):
            raise ValueError(f"{name} is already quantized: export INT4 from the float checkpoint, not an artifact")
        check_group_size(group_size, m.in_features, name)
        q, scale, zero = quantize_groups(m.weight, group_size, symmetric=symmetric)
        out[name + ".weight.int4"], out[name + ".weight.scale"] = pack_nibbles(q), scale
        out[name + ".weight.zero_point"] = zero
        if m.bias is not None:
            out[name + ".bias"] = m.bias.detach().float()
    for name in embeddings:
        out.update(_qentries(name + ".weight", *quantize_rows(model.get_submodule(name).weight)))
    skip = {n + ".weight" for n in embeddings}
    for key, t in model.state_dict().items():
        if key not in skip and not any(key.startswith(n + ".") for n in linears):
            out[key] = t.detach().float()
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}, {"linear": linears, "embedding": embeddings}


def _build(cfg: ModelConfig, tensors: dict[str, torch.Tensor], layout: dict[str, list[str]],
           backend: Int4Backend) -> BitTransformerLM:
    if backend == "kernel" and not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        raise ValueError(f"backend='kernel' needs torch's CPU int4 matmul, absent in torch {torch.__version__}: "
                         "use backend='dequant'")

    def make(entries: dict[str, torch.Tensor], name: str) -> nn.Module:
        packed, scale = entries.pop(name + ".weight.int4"), entries.pop(name + ".weight.scale")
        return Int4Linear(packed, scale, entries.pop(name + ".weight.zero_point"), entries.pop(name + ".bias", None),
                          backend)

    model = build_quantized(cfg, tensors, layout, make)
    model.int4_backend = backend
    return model


def quantize_int4(model: BitTransformerLM, group_size: int = DEFAULT_GROUP_SIZE, *, symmetric: bool = False,
                  backend: Int4Backend = "dequant") -> BitTransformerLM:
    """The in-memory INT4 model (what ``load_int4`` of this model's export returns)."""
    tensors, layout = int4_tensors(model, group_size, symmetric=symmetric)
    return _build(model.cfg, tensors, layout, backend)


def export_int4(model: BitTransformerLM, path: str | Path, *, group_size: int = DEFAULT_GROUP_SIZE,
                symmetric: bool = False, config: RunConfig | None = None) -> Int8Info:
    """Write the INT4 artifact directory atomically; ``config`` (a RunConfig) is stored when given."""
    target = Path(path)
    tensors, layout = int4_tensors(model, group_size, symmetric=symmetric)
    meta = artifact_meta(FORMAT, VERSION, model, config, layout) | {"group_size": group_size,
                                                                     "symmetric": symmetric}
    write_artifact(target, WEIGHTS, tensors, meta)
    fp32_bytes, size = fp32_size(model), sum(f.stat().st_size for f in target.iterdir())
    return Int8Info(
        path=str(target), files=sorted(f.name for f in target.iterdir()), artifact_bytes=size,
        fp32_bytes=fp32_bytes, size_ratio=fp32_bytes / size, quantized_linears=len(layout["linear"]),
        quantized_embeddings=len(layout["embedding"]),
        int8_params=sum(t.numel() for k, t in tensors.items() if k.endswith(".int8")),
        int4_params=sum(2 * t.numel() for k, t in tensors.items() if k.endswith(".int4")),
        fp32_params=sum(t.numel() for k, t in tensors.items() if t.dtype == torch.float32 and not k.endswith(".scale")),
        bits=4, group_size=group_size, engine=None, from_qat=meta["from_qat"],
        scheme=f"weights int4 per group of {group_size} ({'symmetric' if symmetric else 'asymmetric'}), "
               "embeddings int8 per row; activations float",
    )


def load_int4(path: str | Path, *, backend: Int4Backend = "dequant"
              ) -> tuple[BitTransformerLM, RunConfig | ModelConfig]:
    """Rebuild the INT4 model from an artifact directory (or its .safetensors file) for CPU inference.

    Returns (model in eval mode, the stored RunConfig if the export had one, else its ModelConfig).
    """
    cfg, tensors, layout, meta = read_artifact(path, weights=WEIGHTS, fmt=FORMAT, version=VERSION, kind="INT4")
    model = _build(cfg, tensors, layout, backend)
    return model, (stored_run_config(meta["run"]) if meta.get("run") else cfg)


def load_quantized(path: str | Path) -> tuple[BitTransformerLM, RunConfig | ModelConfig]:
    """An INT8 or INT4 export (its directory or its .safetensors file), whichever ``path`` holds."""
    from .quantization import load_int8

    p = Path(path)
    weights = p / WEIGHTS if p.is_dir() else p
    if weights.is_file() and read_meta(p, weights).get("format") == FORMAT:
        return load_int4(p)
    return load_int8(p)
