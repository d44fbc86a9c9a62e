"""Model tools: evaluate, generate, export_int8, scale_up, list_checkpoints, load_checkpoint.

They run in the server process on a worker thread (sync tools), serialized by ``Engine.lock``; torch
releases the GIL in its kernels, so job polling stays responsive meanwhile.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ..config_ops import diff
from ..engine import SCALE_RUN
from ..views import (
    ChangedField,
    CheckpointList,
    CheckpointView,
    EvalResult,
    ExportResult,
    GenerateResult,
    LoadResult,
    ScaleResult,
)
from .common import guarded, read_only, writes

Checkpoint = Annotated[str | None, Field(
    max_length=200, description="Checkpoint '<run>/<name>' from list_checkpoints(); default: the current model.")]
COMPRESSOR_CONTEXT_BYTES = 256 << 10  # enough context for gzip/bzip2 windows; keeps xz -9e quick


def register(server: MCPServer, app) -> None:
    engine = app.engine

    @server.tool(annotations=read_only("Evaluate bits per byte", open_world=True))
    @guarded
    def evaluate(
        split: Annotated[Literal["val", "train"], Field(description="Corpus split when no text is given.")] = "val",
        text: Annotated[str | None, Field(max_length=1_000_000, description="Evaluate this text instead.")] = None,
        max_bytes: Annotated[int, Field(ge=1, le=50_000_000, description="Evaluate at most this many bytes.")]
        = 16384,
        checkpoint: Checkpoint = None,
        compressors: Annotated[bool, Field(description="Also report gzip/bzip2/xz bits per byte.")] = True,
    ) -> EvalResult:
        """Bits per byte (all 9 bit positions and the 8 data bits), bit accuracy, loss by bit phase and compressor
        baselines on the validation split (default), the training split, or given text."""
        from bit_transformer.bits import bits_to_bytes
        from bit_transformer.evaluate import evaluate_bits, evaluate_text

        if text is not None and not text:
            raise ToolError("text is empty: pass some text, or omit it to evaluate the corpus split")
        with engine.lock:
            name, model, _ = engine.model(checkpoint)
            if text is not None:
                report = evaluate_text(model, text, max_bytes=max_bytes, compressors=compressors)
                source = "text"
            else:
                corpus = engine.corpus(app.config().data)
                bits = corpus.val if split == "val" else corpus.train
                context = b""
                if compressors and split == "val" and len(corpus.train):
                    tail = corpus.train[-COMPRESSOR_CONTEXT_BYTES * 9:]
                    context = bits_to_bytes(tail, strict=False)[0]
                report = evaluate_bits(model, bits, max_bytes=max_bytes, compressors=compressors,
                                       compressor_context=context)
                source = split
        return EvalResult(source=source, checkpoint=name, **report.model_dump(mode="json"))

    @server.tool(annotations=writes("Generate text (records its telemetry)", destructive=False))
    @guarded
    def generate(
        prompt: Annotated[str, Field(max_length=100_000, description="Text to continue (may be empty).")] = "",
        max_bytes: Annotated[int, Field(ge=0, le=4096, description="Bytes to generate.")] = 64,
        temperature: Annotated[float, Field(ge=0.0, le=10.0, description="0 = greedy.")] = 1.0,
        top_p: Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")] = 1.0,
        seed: Annotated[int | None, Field(ge=0, le=2**63 - 1, description="Seed for reproducible output.")] = None,
        checkpoint: Checkpoint = None,
        mode: Annotated[Literal["auto", "causal", "diffusion"], Field(
            description="auto: the model's own; diffusion needs a denoising model.")] = "auto",
        steps: Annotated[int, Field(ge=1, le=1024, description="diffusion: unmasking rounds.")] = 32,
    ) -> GenerateResult:
        """Continue a prompt with parity-constrained sampling (every byte decodes); returns the text, K/C/S
        telemetry and the safety gate's verdict."""
        from bit_transformer.generate import generate as gen

        with engine.lock:
            name, model, _ = engine.model(checkpoint)
            result = gen(model, prompt, max_bytes=max_bytes, temperature=temperature, top_p=top_p, seed=seed,
                         safety=app.config().train.safety, mode=mode, steps=steps)
        data = result.model_dump(mode="json")
        app.ws.update_state(last_generation={"checkpoint": name, "time": time.time(), "C": data.get("C"),
                                             "S": data.get("S"), "telemetry": data.get("telemetry"),
                                             "verdict": data.get("verdict")})
        return GenerateResult(checkpoint=name, **data)

    @server.tool(annotations=writes("Export an INT8 model", destructive=True, idempotent=True, open_world=True))
    @guarded
    def export_int8(
        name: Annotated[str | None, Field(max_length=80, description="Export name (letters, digits, . _ -); "
                                          "default derived from the checkpoint. An existing export of that name is "
                                          "replaced.")] = None,
        checkpoint: Checkpoint = None,
        eval_bytes: Annotated[int, Field(ge=0, le=1_000_000, description="Validation bytes used to measure the "
                                         "quality change (0 = skip).")] = 4096,
    ) -> ExportResult:
        """Quantize the model's linear layers to INT8 (dynamic quantization; QAT-trained weights when train.qat)
        and save it under exports/; reports path, size and the bits-per-byte change on validation text."""
        from bit_transformer.evaluate import evaluate_bits

        with engine.lock:
            ck_name, model, ck_cfg = engine.model(checkpoint)
            from bit_transformer.quantization import export_int8 as do_export
            from bit_transformer.quantization import load_int8

            name = name or ck_name.replace("/", "-") + "-int8"
            path = app.ws.export_path(name)
            info = do_export(model, path, config=ck_cfg)
            info_d = info.model_dump(mode="json") if hasattr(info, "model_dump") else dict(info)
            info_d.pop("path", None)  # absolute paths stay on the server
            bpb_fp32 = bpb_int8 = None
            if eval_bytes:
                val = engine.corpus(app.config().data).val
                bpb_fp32 = evaluate_bits(model, val, max_bytes=eval_bytes, compressors=False,
                                         telemetry=False).bits_per_byte
                qmodel = load_int8(path)[0]
                bpb_int8 = evaluate_bits(qmodel, val, max_bytes=eval_bytes, compressors=False,
                                         telemetry=False).bits_per_byte
        size = _size(path)
        fp32 = (info_d.get("fp32_bytes") or info_d.get("fp32_size_bytes")
                or sum(p.numel() * 4 for p in model.parameters()))
        return ExportResult(
            name=name, path=app.ws.rel(path), size_bytes=size, fp32_size_bytes=fp32,
            size_ratio=round(fp32 / size, 3) if size else None, bpb_fp32=bpb_fp32, bpb_int8=bpb_int8,
            bpb_delta=None if bpb_fp32 is None or bpb_int8 is None else bpb_int8 - bpb_fp32,
            eval_bytes=eval_bytes or None, info=info_d, checkpoint=ck_name,
        )

    @server.tool(annotations=writes("Grow the model", destructive=True, open_world=True))
    @guarded
    def scale_up(
        layers: Annotated[int | None, Field(ge=1, le=256, description="New depth (>= current).")] = None,
        d_model: Annotated[int | None, Field(ge=8, le=16384, description="New width (>= current).")] = None,
        dim_feedforward: Annotated[int | None, Field(ge=8, le=65536, description="New FF width.")] = None,
        nhead: Annotated[int | None, Field(ge=1, le=256, description="New head count (divides d_model).")] = None,
        seed: Annotated[int, Field(ge=0, le=2**31 - 1, description="Seed for the new weights.")] = 0,
        checkpoint: Checkpoint = None,
    ) -> ScaleResult:
        """Grow the current model in depth and/or width (function-preserving where the engine can), save it as a
        checkpoint, make it the model of the next train() and set config.model to it. Returns the rebuilt plan
        (schedule horizon for the upcoming run)."""
        if all(v is None for v in (layers, d_model, dim_feedforward, nhead)):
            raise ToolError("nothing to grow: give layers, d_model, dim_feedforward and/or nhead")
        busy = app.jobs.active()
        if busy is not None:
            raise ToolError(f"job {busy.id} is training; scale up after it ends (or cancel_job('{busy.id}'))")
        with engine.lock:
            src, model, _ = engine.model(checkpoint)
            from bit_transformer.config import ModelConfig
            from bit_transformer.memory_limits import check_fits

            grown = {k: v for k, v in dict(layers=layers, d_model=d_model, dim_feedforward=dim_feedforward,
                                           nhead=nhead).items() if v is not None}
            target = ModelConfig.model_validate({**model.cfg.model_dump(), **grown})
            check_fits(app.config().model_copy(update={"model": target}), purpose="training")  # before building it
            from bit_transformer.checkpoint import save_checkpoint
            from bit_transformer.scale import scale_up as grow

            old = model.cfg
            new_model, new_cfg, report = grow(model, old, layers=layers, d_model=d_model,
                                              dim_feedforward=dim_feedforward, nhead=nhead, seed=seed)
            cfg = app.config()
            full = cfg.model_copy(update={"model": new_cfg})
            stamp = time.strftime("%Y%m%d-%H%M%S")
            ck = f"{stamp}-{new_cfg.layers}x{new_cfg.d_model}"
            path = app.ws.checkpoint_path(f"{SCALE_RUN}/{ck}")
            save_checkpoint(path, model=new_model, config=full, state={"scaled_from": src, "update": 0},
                            kind="scaled", update_latest=False)
            with app.config_lock:
                app.save_config(full)
            name = f"{SCALE_RUN}/{ck}"
            app.ws.update_state(current_checkpoint=name, init_checkpoint=name)
            plan = None
            try:
                corpus = engine.corpus(full.data)
                plan = engine.plan(full, engine.windows(corpus.train, new_cfg.max_seq_len))
            except Exception:
                plan = None
        return ScaleResult(
            checkpoint=name, old_model=old, new_model=new_cfg, params_before=model.num_parameters(),
            params_after=new_model.num_parameters(),
            report=report.model_dump(mode="json") if hasattr(report, "model_dump") else dict(report or {}), plan=plan,
            next="train(steps=N) trains the grown model with a schedule rebuilt for that run",
        )

    @server.tool(annotations=read_only("List checkpoints"))
    @guarded
    def list_checkpoints() -> CheckpointList:
        """Every saved checkpoint ('<run>/<name>'), with update, validation loss/bpb and which one is current."""
        state = app.ws.load_state()
        out = [CheckpointView(**{**info.model_dump(mode="json"), "name": name,
                                 "is_current": name == state.current_checkpoint,
                                 "starts_next_run": name == state.init_checkpoint})
               for name, info in engine.checkpoints()]
        for view in out:
            view.__pydantic_extra__.pop("path", None)  # absolute paths stay on the server
        return CheckpointList(checkpoints=out, current=state.current_checkpoint, init_next=state.init_checkpoint)

    @server.tool(annotations=writes("Load a checkpoint", destructive=True, idempotent=True))
    @guarded
    def load_checkpoint(
        name: Annotated[str, Field(min_length=1, max_length=200, description="'<run>/<name>' from "
                                   "list_checkpoints(), a unique bare name, or 'latest'.")],
    ) -> LoadResult:
        """Make a checkpoint the current model (evaluate/generate/export use it) and the starting point of the
        next train(); sets config.model to the checkpoint's architecture."""
        with engine.lock:
            name, model, _ = engine.model(name)
            meta = engine.checkpoint_meta(app.ws.checkpoint_path(name))
        with app.config_lock:
            cfg = app.config()
            new = cfg.model_copy(update={"model": model.cfg})
            changes = diff(cfg.model_dump(mode="json"), new.model_dump(mode="json"))
            if changes:
                app.save_config(new)
        app.ws.update_state(current_checkpoint=name, init_checkpoint=name)
        return LoadResult(name=name, model=model.cfg, params=model.num_parameters(), state=_small(meta.get("state")),
                          changed=[ChangedField(path=p, old=o, new=n) for p, o, n in changes],
                          next="evaluate()/generate() use it now; train(steps=N) continues training from its "
                               "weights with a fresh optimizer and schedule")


def _small(state: dict | None) -> dict:
    """The checkpoint's training state without bulky internals (RNG)."""
    return {k: v for k, v in (state or {}).items() if k not in ("rng",)}


def _size(path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
