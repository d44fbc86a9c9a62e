"""Grow a trained BitTransformerLM in depth and width while keeping the function it computes.

Depth: new blocks go on top of the stack. Each starts as a copy of the (widened) last block, or fresh
(``new_layer_init='random'``), with both residual projections (``Block.residual_projections``, weight
and bias) zeroed, so it adds exactly 0 to the residual stream: an identity in the standard stack and in
the reversible coupling (y1 = x1 + 0, y2 = x2 + 0). With ACT the output is a halting-weighted mix of layer
states; the new layers' states all equal the old last state, and the weights of the old last layer and the
new ones add up to the old last layer's remainder, so the logits are unchanged for *any* halting unit in
the new layers (they copy the old last one). ACT's ponder cost (layer count N + R) does change.

Width: every old weight keeps its place in the top-left slice of the new one. The residual stream grows
from D to D' dims; each new dim must stay a fixed linear function of the old ones (z = A x) so that every
LayerNorm over D' dims sees statistics it can undo. Every writer into the stream (embeddings, attention
output, second FF linear) gets its new rows as A times its old rows, which keeps z = A x after every add.

- D' = k D: A repeats the stream k times. Mean and variance over D' equal those over D, so every LayerNorm
  gives the same outputs on the old dims (exact, eps included). Readers of the stream (q/k/v, first FF
  linear, head, ACT halting) get zero weights on the new dims.
- modern blocks (RMSNorm): every new dim holds 0 and the whole stream is scaled by c = sqrt(D'/D). The mean
  square over D' then equals the old one over D (eps acts as before); the norms' old gains are divided by c
  and their new gains are 1, so the new dims normalise to exactly 0 and normed readers keep random weights on
  them. Rotary frequencies and QK-norm are per head dim, so modern blocks keep head_dim (grow nhead with it).
- otherwise: every new dim holds the mean of the old dims, and the whole stream is scaled by
  c = sqrt(D'/D) (every writer's rows and biases). Then the mean over D' is c times the old mean and the
  variance over D' equals the old one (c^2 * D/D' = 1), so LayerNorm's eps acts exactly as before; scaling
  each LayerNorm's old gains by 1/c undoes the factor c on the centred values. The new dims normalise to
  exactly 0, so LayerNorm-fed readers may keep random weights on them (which breaks the symmetry of the
  identical new dims); ACT's halting units read the raw stream, so their weights are divided by c.

Attention: old heads keep their q/k/v rows. Added heads are fresh and their output columns are zero.
When head_dim grows, the new query dims of old heads are zero and the old query rows are scaled by
sqrt(new head_dim / old head_dim), which undoes the change of SDPA's 1/sqrt(head_dim) scale. Feed-forward:
new hidden units are fresh on the input side and write zero. Position embeddings for a longer
``max_seq_len`` copy the old table cyclically (positions past the old maximum were never trained).

Dropout perturbs the new dims independently, so in training the copies drift apart (symmetry breaking);
the invariants only matter at the moment of growth. The optimizer and LR schedule are not ours: the
training loop rebuilds both for the grown model (new parameters, new horizon).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from .bits import text_to_bits
from .config import FRAME_BITS, GROWABLE, ModelConfig, RunConfig
from .factory import build_model
from .model import BitTransformerLM

PROBE_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. 0123456789 {}[]()<>;:'\",.?!"
)


class ModelShape(BaseModel):
    layers: int
    d_model: int
    nhead: int
    head_dim: int
    ff_dim: int
    max_seq_len: int


class ScaleReport(BaseModel):
    """What scale_up changed, and how much the function moved on a fixed probe batch (eval mode)."""

    old: ModelShape
    new: ModelShape
    params_before: int
    params_after: int
    new_layers: list[int] = Field(description="Indices of the added (identity) blocks.")
    stream_growth: Literal["none", "repeat", "mean", "zero"] = Field(
        description="How new residual dims were filled: repeat (D' = k D), mean or zero (modern blocks; both "
        "scale the stream by sqrt(D'/D))."
    )
    exact: list[str] = Field(description="Parts whose function is preserved exactly (up to float rounding).")
    approximate: list[str] = Field(description="Parts that are preserved only approximately, or not at all.")
    probe_bits: int = Field(description="Bits in the probe batch the numbers below were measured on.")
    max_logit_change: float
    loss_before: float
    loss_after: float


def _shape(cfg: ModelConfig) -> ModelShape:
    return ModelShape(layers=cfg.layers, d_model=cfg.d_model, nhead=cfg.nhead, head_dim=cfg.head_dim,
                      ff_dim=cfg.ff_dim, max_seq_len=cfg.max_seq_len)


class _Widen:
    """Maps old tensors to new shapes. Rows/columns 'in the stream' are extended by A (see module doc)."""

    def __init__(self, old: ModelConfig, new: ModelConfig, fresh: dict[str, torch.Tensor]):
        self.old, self.new, self.fresh = old, new, fresh
        D, Dn = old.d_model, new.d_model
        if Dn == D:
            self.mode = "none"
        else:
            self.mode = "zero" if old.block == "modern" else ("repeat" if Dn % D == 0 else "mean")
        self.c = math.sqrt(Dn / D) if self.mode in ("mean", "zero") else 1.0  # stream scale; norm gains get 1/c
        # Old (part, head, j) -> new row of qkv; old (head, j) -> new column of attn.out.
        h = torch.arange(old.nhead)[:, None] * new.head_dim + torch.arange(old.head_dim)[None, :]
        self.head_idx = h.reshape(-1)
        self.qkv_idx = torch.cat([p * Dn + self.head_idx for p in range(3)])
        self.q_scale = math.sqrt(new.head_dim / old.head_dim)

    def stream(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Append the new stream dims A t along ``dim`` (t's size there is the old d_model)."""
        if self.mode == "none":
            return t
        if self.mode == "repeat":
            return torch.cat([t] * (self.new.d_model // self.old.d_model), dim=dim)
        extra = self.new.d_model - self.old.d_model
        fill = t.mean(dim=dim, keepdim=True) if self.mode == "mean" else torch.zeros_like(t.narrow(dim, 0, 1))
        return self.c * torch.cat([t, fill.expand(*t.shape[:dim], extra, *t.shape[dim + 1 :])], dim=dim)

    def reader(self, name: str, w: torch.Tensor, rows: torch.Tensor | None, normed: bool) -> torch.Tensor:
        """A linear reading the stream: old weights at (rows, :D); new-dim columns zero unless they read a
        norm's output in 'mean'/'zero' mode (those inputs are exactly 0, so fresh weights there are free)."""
        out = self.fresh[name].clone()
        D = self.old.d_model
        rows = torch.arange(w.shape[0]) if rows is None else rows
        out[rows, :D] = w
        if not (normed and self.mode in ("mean", "zero")):
            out[rows, D:] = 0.0
        return out

    def writer(self, w: torch.Tensor, cols: torch.Tensor | None, n_cols: int) -> torch.Tensor:
        """A linear writing into the stream: old weights at (:D, cols), other inputs write 0, rows extended."""
        m = w.new_zeros(w.shape[0], n_cols)
        m[:, torch.arange(w.shape[1]) if cols is None else cols] = w
        return self.stream(m, 0)

    def norm(self, prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A LayerNorm (gain, bias) or RMSNorm (gain) over the stream."""
        g, b = sd[prefix + ".weight"], sd.get(prefix + ".bias")
        if self.mode == "repeat":
            return {prefix + ".weight": self.stream(g, 0), prefix + ".bias": self.stream(b, 0)}
        extra = self.new.d_model - self.old.d_model
        out = {prefix + ".weight": torch.cat([g / self.c, g.new_ones(extra)])}
        if b is not None:
            out[prefix + ".bias"] = torch.cat([b, b.new_zeros(extra)])
        return out

    def vector(self, name: str, b: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = self.fresh[name].clone()
        out[rows] = b
        return out


def _grow_block(w: _Widen, sd: dict[str, torch.Tensor], old_p: str, new_p: str) -> dict[str, torch.Tensor]:
    """All parameters of one old block, widened; keys use the new prefix (biases only where the block has them)."""
    o, n = w.old, w.new
    out: dict[str, torch.Tensor] = {}
    for norm in ("norm1", "norm2"):
        for k, v in w.norm(f"{old_p}.{norm}", sd).items():
            out[new_p + k[len(old_p) :]] = v
    for qk in ("q_norm", "k_norm"):  # modern: per-head-dim gains (head_dim never grows there)
        if f"{old_p}.attn.{qk}.weight" in sd:
            out[f"{new_p}.attn.{qk}.weight"] = sd[f"{old_p}.attn.{qk}.weight"].clone()
    # q/k/v: old rows in place; query rows of old heads scaled for the new head_dim.
    qkv_w = sd[f"{old_p}.attn.qkv.weight"].clone()
    qkv_w[: o.d_model] *= w.q_scale
    name = f"{new_p}.attn.qkv"
    new_w = w.reader(name + ".weight", qkv_w, w.qkv_idx, normed=True)
    qkv_b = sd.get(f"{old_p}.attn.qkv.bias")
    new_b = None
    if qkv_b is not None:
        qkv_b = qkv_b.clone()
        qkv_b[: o.d_model] *= w.q_scale
        new_b = out[name + ".bias"] = w.vector(name + ".bias", qkv_b, w.qkv_idx)
    if n.head_dim > o.head_dim:  # new query dims of old heads are 0: old scores stay q.k
        q_new = torch.ones(n.d_model, dtype=torch.bool)
        q_new[w.head_idx] = False
        q_new[o.nhead * n.head_dim :] = False  # added heads keep fresh queries
        new_w[: n.d_model][q_new] = 0.0
        if new_b is not None:
            new_b[: n.d_model][q_new] = 0.0
    out[name + ".weight"] = new_w
    out[f"{new_p}.attn.out.weight"] = w.writer(sd[f"{old_p}.attn.out.weight"], w.head_idx, n.d_model)
    hidden = torch.arange(o.ff_dim)
    for part in ("up", "gate"):  # readers of the stream; new hidden units are fresh on this side
        if f"{old_p}.mlp.{part}.weight" in sd:
            out[f"{new_p}.mlp.{part}.weight"] = w.reader(f"{new_p}.mlp.{part}.weight",
                                                         sd[f"{old_p}.mlp.{part}.weight"], hidden, True)
            if f"{old_p}.mlp.{part}.bias" in sd:
                out[f"{new_p}.mlp.{part}.bias"] = w.vector(f"{new_p}.mlp.{part}.bias",
                                                           sd[f"{old_p}.mlp.{part}.bias"], hidden)
    out[f"{new_p}.mlp.down.weight"] = w.writer(sd[f"{old_p}.mlp.down.weight"], hidden, n.ff_dim)
    for writer in ("attn.out", "mlp.down"):
        if f"{old_p}.{writer}.bias" in sd:
            out[f"{new_p}.{writer}.bias"] = w.stream(sd[f"{old_p}.{writer}.bias"], 0)
    if f"{old_p}.halt.proj.weight" in sd:  # ACT reads the raw stream: new-dim weights must be 0
        out[f"{new_p}.halt.proj.weight"] = w.reader(f"{new_p}.halt.proj.weight",
                                                    sd[f"{old_p}.halt.proj.weight"] / w.c, None, normed=False)
        out[f"{new_p}.halt.proj.bias"] = sd[f"{old_p}.halt.proj.bias"].clone()
    return out


def _check(cfg: ModelConfig, new: ModelConfig) -> None:
    problems = []
    for field in ("layers", "d_model", "ff_dim", "max_seq_len", "nhead", "head_dim"):
        if getattr(new, field) < getattr(cfg, field):
            problems.append(f"{field} would shrink from {getattr(cfg, field)} to {getattr(new, field)}")
    if cfg.block == "modern" and new.head_dim != cfg.head_dim:
        raise ValueError(f"block='modern' keeps head_dim ({cfg.head_dim}) when growing: rotary frequencies and "
                         "QK-norm are per head dim. Grow nhead with d_model, e.g. "
                         f"nhead={new.d_model // cfg.head_dim} for d_model={new.d_model}")
    if problems:
        raise ValueError("scale_up only grows a model (every old head and unit is kept): " + "; ".join(problems)
                         + ". Grow d_model together with nhead to keep head_dim, e.g. "
                         f"d_model={cfg.head_dim * max(new.nhead, cfg.nhead)}")


def _probe(model: BitTransformerLM, batch: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(batch).logits.double()
    finally:
        model.train(was)


def _default_batch(cfg: ModelConfig) -> torch.Tensor:
    bits = torch.from_numpy(text_to_bits(PROBE_TEXT * 4).astype("int64"))
    length = min(cfg.max_seq_len, 36 * FRAME_BITS)
    return torch.stack([bits[:length], bits[FRAME_BITS * 40 : FRAME_BITS * 40 + length]])


def _loss(logits: torch.Tensor, batch: torch.Tensor) -> float:
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, 2), batch[:, 1:].reshape(-1).to(logits.device)))


def scale_up(
    model: BitTransformerLM,
    cfg: ModelConfig | None = None,
    *,
    layers: int | None = None,
    d_model: int | None = None,
    dim_feedforward: int | None = None,
    nhead: int | None = None,
    max_seq_len: int | None = None,
    seed: int = 0,
    batch: torch.Tensor | None = None,
    new_layer_init: Literal["copy", "random"] = "copy",
) -> tuple[BitTransformerLM, ModelConfig, ScaleReport]:
    """Grow ``model`` (depth and/or width); returns (new model, new ModelConfig, ScaleReport).

    Unset sizes stay as they are (``dim_feedforward`` None keeps following 4 * d_model when the config
    did). ``batch`` (B, T) of bits is the probe the report's numbers are measured on (default: a fixed
    text). ``seed`` seeds the fresh parts; the global RNG is left untouched.
    """
    cfg = cfg or model.cfg
    if any(hasattr(m, "_packed_params") or hasattr(m, "weight_int8") for m in model.modules()):
        raise ValueError("scale_up needs the float model: grow the fp32/QAT checkpoint, then export INT8 again")
    update = {k: v for k, v in dict(layers=layers, d_model=d_model, dim_feedforward=dim_feedforward,
                                     nhead=nhead, max_seq_len=max_seq_len).items() if v is not None}
    new_cfg = ModelConfig.model_validate({**cfg.model_dump(), **update})
    _check(cfg, new_cfg)
    try:
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
    except StopIteration:  # pragma: no cover - a model always has parameters
        device, dtype = torch.device("cpu"), torch.float32
    sd = {k: v.detach().to("cpu", torch.float64 if dtype == torch.float64 else torch.float32)
          for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new_model = build_model(new_cfg).to(next(iter(sd.values())).dtype)
    fresh = {k: v.detach().clone() for k, v in new_model.state_dict().items()}
    w = _Widen(cfg, new_cfg, fresh)

    out: dict[str, torch.Tensor] = {}
    if "pos_emb.weight" in sd:  # classic blocks: learned absolute positions (modern ones rotate q/k instead)
        pos = sd["pos_emb.weight"]
        rows = fresh["pos_emb.weight"].shape[0]  # max_seq_len bits (flat) or frames + 1 (framed)
        reps = -(-rows // pos.shape[0])
        out["pos_emb.weight"] = w.stream(pos.repeat(reps, 1)[:rows], 1)
    if "start" in sd:  # framed: the start frame and the frame embedding MLP (hidden width = d_model)
        out["start"] = w.stream(sd["start"], 0)
        hidden = torch.arange(cfg.d_model)
        out["frame_in.0.weight"] = w.vector("frame_in.0.weight", sd["frame_in.0.weight"], hidden)
        out["frame_in.2.weight"] = w.writer(sd["frame_in.2.weight"], hidden, new_cfg.d_model)  # new units write 0
        if "frame_in.0.bias" in sd:
            out["frame_in.0.bias"] = w.vector("frame_in.0.bias", sd["frame_in.0.bias"], hidden)
            out["frame_in.2.bias"] = w.stream(sd["frame_in.2.bias"], 0)
    for name in ("bit_emb.weight", "phase_emb.weight", "mask_emb.weight"):  # mask_emb: denoising models only
        if name in sd:
            out[name] = w.stream(sd[name], 1)
    out.update(w.norm("stack.norm", sd))
    out["head.weight"] = w.reader("head.weight", sd["head.weight"], None, normed=True)
    if "head.bias" in sd:
        out["head.bias"] = sd["head.bias"].clone()
    for i in range(cfg.layers):
        out.update(_grow_block(w, sd, f"stack.blocks.{i}", f"stack.blocks.{i}"))
    top = f"stack.blocks.{cfg.layers - 1}."
    new_layers = list(range(cfg.layers, new_cfg.layers))
    for i in new_layers:
        src = out if new_layer_init == "copy" else fresh
        prefix = top if new_layer_init == "copy" else f"stack.blocks.{i}."
        out.update({f"stack.blocks.{i}." + k[len(prefix) :]: v.clone() for k, v in src.items()
                    if k.startswith(prefix)})
    names = {id(m): n for n, m in new_model.named_modules()}
    for i in new_layers:  # identity: both residual writers (weight and bias) are zero
        for proj in new_model.blocks[i].residual_projections:
            for part in ("weight", "bias") if proj.bias is not None else ("weight",):
                out[f"{names[id(proj)]}.{part}"].zero_()

    unknown_old = sorted(k for k in sd if k not in out)
    missing = sorted(set(fresh) - set(out))
    if unknown_old or missing:
        raise NotImplementedError(f"scale_up does not know how to grow {unknown_old or missing}: "
                                  "the model has parameters this version of scale.py does not map")
    new_model.load_state_dict(out, strict=True)
    new_model.to(device=device, dtype=dtype).train(model.training)
    qat = getattr(model, "qat_prepared", False)
    if qat:  # keep training what was being trained: the same fake quantization on the grown model
        from .quantization import QATLinear, prepare_qat

        qlin = [m for m in model.modules() if isinstance(m, QATLinear)]
        acts = any(m.quant_input for m in qlin)
        first = qlin[0] if qlin else QATLinear  # the same target (int8 or int4 with its groups) as the source
        prepare_qat(new_model, activations=acts, bits=first.bits, group_size=first.group_size,
                    symmetric=first.symmetric)

    probe = (batch if batch is not None else _default_batch(cfg)).long().to(device)
    before, after = _probe(model, probe), _probe(new_model, probe)
    exact, approx = _notes(cfg, new_cfg, w.mode, bool(new_layers))
    if qat and (w.mode != "none" or new_cfg.ff_dim > cfg.ff_dim):
        approx.append("QAT: new heads/units/columns change some per-row weight and per-tensor activation ranges, "
                      "so the fake-quantized function moves slightly")
    report = ScaleReport(
        old=_shape(cfg), new=_shape(new_cfg), params_before=model.num_parameters(),
        params_after=new_model.num_parameters(), new_layers=new_layers, stream_growth=w.mode,
        exact=exact, approximate=approx, probe_bits=probe.numel(),
        max_logit_change=float((after - before).abs().max()),
        loss_before=_loss(before, probe), loss_after=_loss(after, probe),
    )
    return new_model, new_cfg, report


def _notes(old: ModelConfig, new: ModelConfig, mode: str, deeper: bool) -> tuple[list[str], list[str]]:
    exact, approx = [], []
    if deeper:
        exact.append(f"depth {old.layers}->{new.layers}: new blocks are identities (residual projections zero)"
                     + (", also in the reversible coupling" if new.reversible else ""))
        if new.act:
            exact.append("ACT logits: new layers' states equal the old last state and their halting weights sum "
                         "to its old remainder")
            approx.append("ACT ponder cost (N + R) grows: positions that ran every old layer now run more")
    if mode == "repeat":
        exact.append(f"d_model {old.d_model}->{new.d_model}: stream repeated x{new.d_model // old.d_model}, "
                     "LayerNorm statistics unchanged")
    elif mode == "zero":
        exact.append(f"d_model {old.d_model}->{new.d_model}: new dims hold 0, stream scaled by "
                     f"sqrt({new.d_model}/{old.d_model}) and RMSNorm gains by its inverse (eps included)")
    elif mode == "mean":
        exact.append(f"d_model {old.d_model}->{new.d_model}: new dims hold the stream mean, stream scaled by "
                     f"sqrt({new.d_model}/{old.d_model}) and LayerNorm gains by its inverse (eps included)")
    if new.nhead > old.nhead or new.head_dim > old.head_dim:
        exact.append(f"attention {old.nhead}x{old.head_dim} -> {new.nhead}x{new.head_dim}: old heads kept, "
                     "new heads/dims write zero, queries rescaled for the new 1/sqrt(head_dim)")
    if new.ff_dim > old.ff_dim:
        exact.append(f"feed-forward {old.ff_dim}->{new.ff_dim}: new hidden units write zero")
    if new.max_seq_len > old.max_seq_len:
        exact.append(f"positions < {old.max_seq_len} unchanged")
        approx.append(f"positions {old.max_seq_len}..{new.max_seq_len - 1} copy the old table cyclically "
                      "(never trained)")
    approx.append("training mode: dropout perturbs copied/new dims independently (intended symmetry breaking)")
    return exact, approx


# ------------------------------------------------------------------------------------------ workflow
SCALED_KIND = "scaled"  # the checkpoint kind scale-ups write (listings tell them from trained checkpoints)


class ScaledCheckpoint(BaseModel):
    """What ``scale_up_checkpoint`` wrote: the checkpoint, the config stored in it, and the growth report."""

    path: str
    config: RunConfig
    report: ScaleReport


def scale_up_checkpoint(
    model: BitTransformerLM,
    config: RunConfig,
    out: str | Path,
    *,
    scaled_from: str,
    sizes: dict[str, int | None],
    seed: int = 0,
    new_layer_init: Literal["copy", "random"] = "copy",
) -> ScaledCheckpoint:
    """Grow ``model`` by ``sizes`` (keys from ``config.GROWABLE``; None = unchanged) and save it at ``out``.

    The one scale-up workflow (``bit-transformer scale-up`` and the ``scale_up`` tool). A grown model this
    machine cannot train is refused (ModelTooLarge) before it is built: training it is the next step. The
    checkpoint has kind ``'scaled'`` (it is neither a training state nor a hand-saved one: update 0, no
    optimizer), holds ``config`` with the grown model and ``state = {update: 0, scaled_from, scale: report}``,
    and leaves its folder's ``latest`` pointer alone (it is not the newest state of a training run), so
    ``train --init`` / ``train()`` start from it with a fresh optimizer and schedule.
    """
    from .checkpoint import save_checkpoint
    from .memory_limits import check_fits

    unknown = sorted(set(sizes) - set(GROWABLE))
    grow = {k: v for k, v in sizes.items() if v is not None}
    if unknown or not grow:
        raise ValueError(f"nothing to grow: give at least one of {', '.join(GROWABLE)}"
                         + (f" (not {', '.join(unknown)})" if unknown else ""))
    target = ModelConfig.model_validate({**model.cfg.model_dump(), **grow})
    check_fits(config.model_copy(update={"model": target}), purpose="training")
    new_model, new_cfg, report = scale_up(model, model.cfg, seed=seed, new_layer_init=new_layer_init, **grow)
    full = config.model_copy(update={"model": new_cfg})
    path = save_checkpoint(Path(out), model=new_model, config=full, kind=SCALED_KIND, update_latest=False,
                           state={"update": 0, "scaled_from": scaled_from, "scale": report.model_dump(mode="json")})
    return ScaledCheckpoint(path=str(path), config=full, report=report)
