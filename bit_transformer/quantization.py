"""INT8 export for CPU inference, and quantization-aware training (QAT) that targets the same format.

Scheme (shared by export, the loader and QAT, so they agree bit for bit on the integers):

- Weights of the block linears (``attn.qkv``, ``attn.out``, ``mlp.up``/``mlp.gate``/``mlp.down``): int8, per output
  channel, symmetric: ``scale = max|w_row| / 127`` (1.0 for an all-zero row), ``q = round(w / scale)``
  in [-127, 127], zero point 0 (stored anyway, as the format's explicit statement).
- Embeddings (bit, position, phase): int8 per row, same rule; dequantized to float32 at load time. They
  are weight-only (a look-up, no matmul), quantized to keep the file small: the position table is a
  big share of a small model.
- Activations: dynamic. At inference the kernel quantizes each linear's input per tensor (asymmetric
  uint8, 7-bit range on x86/fbgemm/onednn, which avoid int16 overflow that way) from that call's min/max.
- Everything else (norms, QK-norm gains, biases, the 2-way head, ACT halting units) stays float32: < 1% of the
  weights, and the head/halting units make the logits and discrete halting decisions.

The artifact (``model.int8.safetensors`` + ``config.json``, no pickle) and how loading packs it into
``torch.ao.nn.quantized.dynamic.Linear`` (or the float ``Int8Linear`` emulation with ``backend='reference'``)
are described in docs/engine.md (INT8 export).

QAT: ``prepare_qat`` swaps those linears (and embeddings) for subclasses that fake-quantize their
weights with exactly the rule above and a straight-through estimator; the linears also fake-quantize
their input the way the dynamic kernel will (per tensor, 7-bit). That activation part is where most of
the INT8 error comes from (measured: ~2% of the output scale per linear, vs ~0.5% from the weights), so
it is on by default (``activations=False`` to switch it off). State-dict keys are unchanged, so QAT
checkpoints load into plain models and vice versa. ``bits=4`` trains for the INT4 export instead
(quantization_int4.py: per-group 4-bit weights, float activations).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from .block import upgrade_key
from .config import ModelConfig, RunConfig, TrainConfig, stored_model_config, stored_run_config
from .export import Int8Info
from .factory import build_model
from .int4 import check_group_size, fake_quant_groups
from .model import BitTransformerLM

FORMAT = "bit-transformer-int8"
ARTIFACT_FORMATS = (FORMAT, "bit-transformer-int4")  # exports may replace each other in place
VERSION = 1
WEIGHTS = "model.int8.safetensors"
CONFIG = "config.json"
QMAX = 127
Backend = Literal["auto", "dynamic", "reference"]


# ----------------------------------------------------------------------------------------- the rule
def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 q, float32 scale per row): symmetric per-row int8, the one rule everyone uses."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """w snapped to its int8 grid in the forward pass; identity gradient (straight-through)."""
    q, scale = quantize_rows(w)
    return w + (q.to(w.dtype) * scale[:, None].to(w.dtype) - w).detach()


def act_levels(engine: str | None = None) -> int:
    """Activation levels of the dynamic kernel: 127 (7-bit, reduce_range) except qnnpack's 255."""
    return 255 if (engine or torch.backends.quantized.engine) == "qnnpack" else 127


def fake_quant_act(x: torch.Tensor, levels: int = 127) -> torch.Tensor:
    """Per-tensor asymmetric dynamic quantization as the int8 kernel does it; straight-through gradient."""
    d = x.detach().float()
    lo, hi = d.min().clamp(max=0.0), d.max().clamp(min=0.0)
    scale = ((hi - lo) / levels).clamp(min=1e-12)
    zp = torch.round(-lo / scale).clamp(0, levels)
    snapped = (torch.round(d / scale).add_(zp).clamp_(0, levels) - zp) * scale
    return x + (snapped.to(x.dtype) - x).detach()


# ----------------------------------------------------------------------------------------- QAT
class QATLinear(nn.Linear):
    """nn.Linear training against its export: fake-quantized weight (and input, for INT8).

    ``bits`` 8: the INT8 rule above; 4: the per-group INT4 rule (int4.py) with ``group_size``/``symmetric``, no
    input quantization (the INT4 export keeps activations float).
    """

    quant_input: bool = True
    levels: int = 127
    bits: int = 8
    group_size: int = 32
    symmetric: bool = False

    def snapped_weight(self) -> torch.Tensor:
        if self.bits == 4:
            return fake_quant_groups(self.weight, self.group_size, symmetric=self.symmetric)
        return fake_quant_weight(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_input:
            x = fake_quant_act(x, self.levels)
        return F.linear(x, self.snapped_weight(), self.bias)


class QATEmbedding(nn.Embedding):
    """nn.Embedding whose table is fake-quantized per row, as exported."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, fake_quant_weight(self.weight))


def quant_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """(linear names, embedding names) that the INT8 format quantizes."""
    linears = [n for n, m in model.named_modules() if n.startswith("stack.blocks.") and ".halt" not in n
               and (isinstance(m, nn.Linear) or _is_int8_linear(m) or hasattr(m, "weight_int4"))]
    embeddings = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    return linears, embeddings


def _swap(module: nn.Module, cls: type, **attrs) -> nn.Module:
    """The same parameters (same objects: an existing optimizer keeps working) under another class."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    new.__dict__.update(attrs)
    return new


def prepare_qat(model: BitTransformerLM, *, activations: bool = True, bits: Literal[4, 8] = 8,
                group_size: int = 32, symmetric: bool = False) -> BitTransformerLM:
    """Insert fake quantization in place (weights; inputs of the block linears when ``activations``).

    ``bits=4`` trains for the INT4 export (per-group weights of ``group_size``, float inputs: ``activations``
    is ignored); the embeddings are fake-quantized as int8 either way, as both exports store them.
    """
    linears, embeddings = quant_targets(model)
    levels = act_levels()
    if bits == 4:
        for name in linears:
            check_group_size(group_size, model.get_submodule(name).in_features, name, "train.int4_group_size")
    for name in linears:
        m = model.get_submodule(name)
        if not isinstance(m, QATLinear):
            model.set_submodule(name, _swap(m, QATLinear, quant_input=activations and bits == 8, levels=levels,
                                            bits=bits, group_size=group_size, symmetric=symmetric))
    for name in embeddings:
        m = model.get_submodule(name)
        if not isinstance(m, QATEmbedding):
            model.set_submodule(name, _swap(m, QATEmbedding))
    model.qat_prepared = True
    return model


def apply_qat(model: BitTransformerLM, train: TrainConfig | None = None) -> BitTransformerLM:
    """The one place that prepares a model for quantization-aware training (idempotent).

    ``train`` (the run's TrainConfig) picks the target: INT4 when ``quantization='int4'`` (with its
    ``int4_group_size``), else INT8.
    """
    if getattr(model, "qat_prepared", False):
        return model
    if train is not None and train.quantization == "int4":
        model = prepare_qat(model, bits=4, group_size=train.int4_group_size)
    else:
        model = prepare_qat(model) or model
    model.qat_prepared = True  # recorded in meta.json so loading rebuilds the same structure
    return model


def convert_qat(model: BitTransformerLM) -> BitTransformerLM:
    """A plain float model with every QAT weight snapped to its export grid (a copy; the input is kept).

    Its export re-derives exactly the integers the fake quantization used (the scales to within 1 ulp),
    so ``export_int8(convert_qat(m))`` and ``export_int8(m)`` give the same INT8 model (likewise INT4).
    """
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in list(out.named_modules()):
            if isinstance(m, QATLinear | QATEmbedding):
                base = nn.Linear if isinstance(m, QATLinear) else nn.Embedding
                plain = _swap(m, base)
                for attr in ("quant_input", "levels", "bits", "group_size", "symmetric"):
                    plain.__dict__.pop(attr, None)
                plain.weight.copy_(m.snapped_weight() if isinstance(m, QATLinear) else fake_quant_weight(m.weight))
                out.set_submodule(name, plain)
    out.qat_prepared = False
    return out


# ----------------------------------------------------------------------------------------- int8 modules
class Int8Linear(nn.Module):
    """Reference int8 linear in float32: same integers and same dynamic input rounding as the kernel."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, levels: int = 127):
        super().__init__()
        self.in_features, self.out_features, self.levels = q.shape[1], q.shape[0], levels
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.register_buffer("_w", q.float() * scale[:, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quant_act(x, self.levels), self._w.to(x.dtype), self.bias)


def _is_int8_linear(m: nn.Module) -> bool:
    return isinstance(m, Int8Linear) or (type(m).__name__ == "Linear" and hasattr(m, "_packed_params"))


def dynamic_available() -> bool:
    """True when this torch has a quantized engine that runs dynamic int8 linears."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        return False
    try:
        importlib.import_module("torch.ao.nn.quantized.dynamic")
    except ImportError:  # pragma: no cover - removed in some future torch
        return False
    return True


@contextlib.contextmanager
def _quiet():
    """Quantized-tensor constructors warn about a future deprecation; the loader stays usable until then."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*")
        yield


@contextlib.contextmanager
def _engine(name: str | None):
    """Pack under ``name`` (the packed weights keep their engine; the global setting is restored)."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if name is not None and name not in engines:
        raise ValueError(f"quantized engine {name!r} is not available here; this torch has {engines}")
    old = torch.backends.quantized.engine
    chosen = name or (old if old != "none" else engines[0])
    torch.backends.quantized.engine = chosen
    try:
        yield chosen
    finally:
        torch.backends.quantized.engine = old


def _dynamic_linear(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    import torch.ao.nn.quantized.dynamic as nnqd

    out_f, in_f = q.shape
    with _quiet():
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(out_f, dtype=torch.long), 0)
        mod = nnqd.Linear(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
        mod.set_weight_bias(qw, bias)
    return mod


# ----------------------------------------------------------------------------------------- tensors
def int8_tensors(model: BitTransformerLM) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Every tensor of the artifact (int8 + float32) and the layout (which modules are quantized)."""
    linears, embeddings = quant_targets(model)
    out: dict[str, torch.Tensor] = {}
    for name in linears:
        m = model.get_submodule(name)
        if hasattr(m, "weight_int4"):
            raise ValueError(f"{name} is already int4: export INT8 from the float checkpoint, not an INT4 artifact")
        if isinstance(m, Int8Linear):
            q, scale, bias = m.weight_int8, m.scale, m.bias
        elif _is_int8_linear(m):  # a packed torch.ao dynamic linear: read its integers back
            qw = m.weight()
            q, scale, bias = qw.int_repr(), qw.q_per_channel_scales().float(), m.bias()
        else:
            (q, scale), bias = quantize_rows(m.weight), m.bias
        out.update(_qentries(name + ".weight", q, scale))
        if bias is not None:
            out[name + ".bias"] = bias.detach().float()
    for name in embeddings:
        out.update(_qentries(name + ".weight", *quantize_rows(model.get_submodule(name).weight)))
    skip = {n + ".weight" for n in embeddings} | {n + s for n in linears for s in (".weight", ".bias")}
    for key, t in model.state_dict().items():
        if key not in skip and not any(key.startswith(n + ".") for n in linears):
            out[key] = t.detach().float()
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}, {"linear": linears, "embedding": embeddings}


def _qentries(key: str, q: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key + ".int8": q.to(torch.int8), key + ".scale": scale.float(),
            key + ".zero_point": torch.zeros(q.shape[0], dtype=torch.int8)}


def build_quantized(cfg: ModelConfig, tensors: dict[str, torch.Tensor], layout: dict[str, list[str]],
                    make_linear: Callable[[dict[str, torch.Tensor], str], nn.Module]) -> BitTransformerLM:
    """The model an export describes: int8 embeddings dequantized, the floats loaded, and each block linear
    built by ``make_linear(entries, name)``, which pops that linear's entries (weights, bias) from ``entries``."""
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the caller's RNG
        model = build_model(cfg)
    plain = dict(tensors)
    for name in layout["embedding"]:
        q, scale = plain.pop(name + ".weight.int8"), plain.pop(name + ".weight.scale")
        plain.pop(name + ".weight.zero_point")
        plain[name + ".weight"] = q.float() * scale[:, None]
    linears = {name: make_linear(plain, name) for name in layout["linear"]}
    missing, unexpected = model.load_state_dict(plain, strict=False)  # floats first, then swap the linears in
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in linears]
    if missing or unexpected:
        raise ValueError(f"quantized artifact does not match its config: missing={missing[:5]}, "
                         f"unexpected={unexpected[:5]}")
    for name, mod in linears.items():
        model.set_submodule(name, mod)
    return model.eval()


def _build(cfg: ModelConfig, tensors: dict[str, torch.Tensor], layout: dict[str, list[str]],
           backend: Backend, engine: str | None = None) -> BitTransformerLM:
    use_dynamic = backend == "dynamic" or (backend == "auto" and dynamic_available())

    def make(entries: dict[str, torch.Tensor], name: str) -> nn.Module:
        q, scale = entries.pop(name + ".weight.int8"), entries.pop(name + ".weight.scale")
        entries.pop(name + ".weight.zero_point")
        bias = entries.pop(name + ".bias", None)
        return _dynamic_linear(q, scale, bias) if use_dynamic else Int8Linear(q, scale, bias, act_levels())

    with _engine(engine) if use_dynamic else contextlib.nullcontext("reference") as chosen:
        model = build_quantized(cfg, tensors, layout, make)
    model.int8_backend = "dynamic" if use_dynamic else "reference"
    model.int8_engine = chosen
    return model


def quantize_int8(model: BitTransformerLM, *, backend: Backend = "auto", engine: str | None = None) -> BitTransformerLM:
    """The in-memory INT8 model (what ``load_int8`` of this model's export returns)."""
    tensors, layout = int8_tensors(model)
    return _build(model.cfg, tensors, layout, backend, engine)


# ----------------------------------------------------------------------------------------- artifact
def export_int8(model: BitTransformerLM, path: str | Path, *, config: RunConfig | None = None) -> Int8Info:
    """Write the INT8 artifact directory atomically; ``config`` (a RunConfig) is stored when given."""
    target = Path(path)
    tensors, layout = int8_tensors(model)
    meta = artifact_meta(FORMAT, VERSION, model, config, layout) | {"act_levels": act_levels()}
    write_artifact(target, WEIGHTS, tensors, meta)
    fp32_bytes = fp32_size(model)
    size = sum(f.stat().st_size for f in target.iterdir())
    n_int8 = sum(t.numel() for k, t in tensors.items() if k.endswith(".int8"))
    return Int8Info(
        path=str(target), files=sorted(f.name for f in target.iterdir()), artifact_bytes=size,
        fp32_bytes=fp32_bytes, size_ratio=fp32_bytes / size, quantized_linears=len(layout["linear"]),
        quantized_embeddings=len(layout["embedding"]), int8_params=n_int8,
        fp32_params=sum(t.numel() for k, t in tensors.items() if t.dtype == torch.float32 and not k.endswith(".scale")),
        engine=torch.backends.quantized.engine, from_qat=meta["from_qat"],
    )


def artifact_meta(fmt: str, version: int, model: BitTransformerLM, config: RunConfig | None,
                  layout: dict[str, list[str]]) -> dict:
    """The config.json fields every quantized export has."""
    return {"format": fmt, "version": version, "model": model.cfg.model_dump(mode="json"),
            "run": config.model_dump(mode="json") if config is not None else None, "layout": layout,
            "from_qat": bool(getattr(model, "qat_prepared", False)), "torch": torch.__version__}


def write_artifact(target: Path, weights: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write an export directory (``weights`` + config.json) atomically, replacing an earlier export there."""
    kind = meta["format"].rsplit("-", 1)[-1].upper()
    if target.suffix == ".safetensors":
        raise ValueError(f"{target}: give a directory for the {kind} artifact (it holds {weights} and {CONFIG})")
    if target.exists() and not _is_artifact(target) and (target.is_file() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an INT8/INT4 artifact: choose a new path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        header = {"format": meta["format"], "config": json.dumps(meta)}  # the file alone is loadable too
        safetensors.torch.save_file(tensors, str(tmp / weights), metadata=header)
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fp32_size(model: BitTransformerLM) -> int:
    """Bytes of ``model``'s float32 state dict as safetensors: what a quantized export is compared with."""
    fp32 = {k: v.detach().float().cpu().contiguous() for k, v in _plain_state(model).items()}
    return len(safetensors.torch.save(fp32))


def _plain_state(model: BitTransformerLM) -> dict[str, torch.Tensor]:
    """The float state dict of ``model`` (an int8 model's linears dequantized), for the fp32 size."""
    if not any(_is_int8_linear(m) for m in model.modules()):
        return model.state_dict()
    tensors, layout = int8_tensors(model)
    out = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[-1] not in ("int8", "scale", "zero_point")}
    for name in layout["linear"] + layout["embedding"]:
        out[name + ".weight"] = tensors[name + ".weight.int8"].float() * tensors[name + ".weight.scale"][:, None]
    return out


def _is_artifact(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG).read_text(encoding="utf-8")).get("format") in ARTIFACT_FORMATS
    except (OSError, ValueError):
        return False


def read_artifact(path: str | Path, *, weights: str, fmt: str, version: int, kind: str
                  ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, list[str]], dict]:
    """(model config, tensors, layout, meta) of an INT8 or INT4 export: its directory or its .safetensors file.

    Keys are upgraded on the way in: artifacts written before the block stack named its parts the old way
    (blocks.N.ff.0, ln_f) load unchanged.
    """
    p = Path(path)
    file = p / weights if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no {kind} artifact at {p}: expected a directory with {weights}")
    meta = read_meta(p, file)
    if meta.get("format") != fmt:
        raise ValueError(f"{p} is not a {fmt} artifact (format={meta.get('format')!r})")
    if meta.get("version", 0) > version:
        raise ValueError(f"{p} has {kind} format version {meta['version']}; this code reads up to {version}")
    tensors = {upgrade_key(k): v for k, v in safetensors.torch.load_file(str(file)).items()}
    layout = {name: [upgrade_key(n) for n in names] for name, names in meta["layout"].items()}
    return stored_model_config(meta["model"]), tensors, layout, meta


def read_meta(p: Path, weights: Path) -> dict:
    """An export's config.json (or, for a bare weights file, the copy in its safetensors header)."""
    if p.is_dir() and (p / CONFIG).is_file():
        return json.loads((p / CONFIG).read_text(encoding="utf-8"))
    with safe_open(str(weights), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("config", "{}"))


def load_int8(
    path: str | Path, *, backend: Backend = "auto", engine: str | None = None
) -> tuple[BitTransformerLM, RunConfig | ModelConfig]:
    """Rebuild the INT8 model from an artifact directory (or its .safetensors file) for CPU inference.

    ``engine`` packs the int8 weights for that quantized engine ('x86', 'fbgemm', 'onednn', ...; default:
    the process's ``torch.backends.quantized.engine``); the numbers are the same, the speed is not (on
    AMX CPUs onednn was the fastest here). Returns (model in eval mode, the stored RunConfig if the export
    had one, else its ModelConfig).
    """
    cfg, tensors, layout, meta = read_artifact(path, weights=WEIGHTS, fmt=FORMAT, version=VERSION, kind="INT8")
    model = _build(cfg, tensors, layout, backend, engine)
    return model, (stored_run_config(meta["run"]) if meta.get("run") else cfg)
