"""Inspection tools: telemetry (latest K/C/S, gate EMA and state) and inspect_attention (tasks 9-12)."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from bit_transformer.records import GateDecision

from ..attention_probe import AttentionReport, probe
from ..engine import EngineError
from ..views import TelemetryView
from .common import guarded, read_only
from .compact import reply
from .model import Checkpoint

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog. Bits in, bits out."


def register(server: MCPServer, app) -> None:
    engine = app.engine

    @server.tool(annotations=read_only("Telemetry and safety gate", open_world=True))
    @guarded
    def telemetry(
        compute: Annotated[bool, Field(description="Also measure K/C/S of the current model now (slower).")]
        = False,
        job_id: Annotated[str | None, Field(max_length=80, description="Default: the newest job with "
                                            "telemetry.")] = None,
    ) -> Annotated[CallToolResult, TelemetryView]:
        """Latest K (negentropy), C (LZ complexity), S (symbiosis), attention entropy and the safety gate's EMAs
        and state from training, plus the last generate()'s verdict. Use to see why the gate stopped a job."""
        jobs = app.jobs.all()
        if job_id is not None:
            job = app.jobs.get(job_id)
            if job is None:
                raise EngineError(f"unknown job_id {job_id!r}; list_jobs() shows the jobs")
        else:
            job = next((j for j in reversed(jobs) if j.record.last_eval or j.record.telemetry), None)
        if job is not None:
            job.ensure_loaded()
        view = TelemetryView(last_generation=app.ws.load_state().last_generation)
        if job is not None:
            ev, sample = job.record.last_eval, job.record.telemetry
            view.job_id, view.update = job.id, job.update()
            if ev:
                view.last_eval, view.gate = ev, ev.gate
            if sample:
                view.telemetry = sample.model_dump()
                view.telemetry_source = f"{job.id} (sampled at each validation)"
        if compute:
            view.telemetry, view.telemetry_source = _measure(app)
        if view.gate is None and view.last_generation and view.last_generation.get("verdict"):
            view.gate = GateDecision.model_validate(view.last_generation["verdict"])
        if view.telemetry is None and view.gate is None:
            view.note = "no telemetry yet: train(steps=N) reports it at each validation; telemetry(compute=true) " \
                        "measures it now"
        return reply(view)

    def _measure(app_):
        import torch

        from bit_transformer.telemetry import summarize

        with engine.lock:
            name, model, _ = engine.model(None)
            val = engine.corpus(app_.config().data).val
            T = min(model.cfg.max_seq_len, (len(val) - 1) // 9 * 9)
            if T < 9:
                raise EngineError("validation text is too short to measure telemetry")
            x = torch.from_numpy(val[:T].astype("int64"))[None]
            with torch.no_grad():
                out = model(x, return_telemetry=True)
            summary = summarize(x, out.logits.float(), out.telemetry)
        return summary.model_dump(mode="json"), f"computed now with {name} on {T // 9} validation bytes"

    @server.tool(annotations=read_only("Inspect attention"))
    @guarded
    def inspect_attention(
        text: Annotated[str, Field(min_length=1, max_length=100_000, description="Input (cut to max_seq_len "
                                   "bits).")] = DEFAULT_TEXT,
        layer: Annotated[int | None, Field(ge=0, le=255, description="One layer; default all.")] = None,
        chunk_size: Annotated[int | None, Field(ge=0, le=1 << 20, description="0 = full attention.")] = None,
        overlap: Annotated[int | None, Field(ge=0, le=1 << 20)] = None,
        causal: bool | None = None,
        full_attn_logging: bool | None = None,
        include_maps: Annotated[bool, Field(description="Return head-averaged T x T maps (large).")] = False,
        checkpoint: Checkpoint = None,
    ) -> Annotated[CallToolResult, AttentionReport]:
        """Debug attention on a short input, per layer: SDPA path (causal, mask, chunked), head entropy, mask-cache
        hits, and whether chunked maps match a dense reference. Current model (else a fresh one)."""
        cfg = app.config()
        updates = {k: v for k, v in (("causal", causal), ("full_attn_logging", full_attn_logging)) if v is not None}
        if chunk_size is not None:
            updates["chunk_size"] = chunk_size or None
            if not chunk_size and overlap is None:
                updates["overlap"] = 0
        if overlap is not None:
            updates["overlap"] = overlap
        with engine.lock:
            model, source = _model_for(cfg, checkpoint)
            base = model.cfg.model_dump()
            attn_keys = ("causal", "chunk_size", "overlap", "full_attn_logging")
            wanted = {**base, **{k: getattr(cfg.model, k) for k in attn_keys}, **updates}
            from bit_transformer.config import ModelConfig

            new_cfg = ModelConfig.model_validate(wanted)
            if new_cfg != model.cfg:
                from bit_transformer.factory import build_model

                clone = build_model(new_cfg)
                # Attention settings change no parameter shapes; only a bidirectional clone has a MASK vector
                # (unused here: the probe reads clean bits), which a causal source lacks and the reverse.
                result = clone.load_state_dict(model.state_dict(), strict=False)
                if (set(result.missing_keys) | set(result.unexpected_keys)) - {"mask_emb.weight"}:
                    raise RuntimeError(f"attention override changed parameters: {result}")
                model = clone
            return reply(probe(model, text, layer=layer, include_maps=include_maps, source=source))

    def _model_for(cfg, checkpoint):
        try:
            name, model, _ = engine.model(checkpoint)
        except EngineError:
            if checkpoint is not None:
                raise
            return engine.fresh_model(cfg), f"fresh model of the config (seed {cfg.train.seed}; no checkpoint yet)"
        arch = ("arch", "layers", "d_model", "nhead", "dim_feedforward", "max_seq_len", "act", "reversible")
        if checkpoint is None and any(getattr(model.cfg, k) != getattr(cfg.model, k) for k in arch):
            return engine.fresh_model(cfg), f"fresh model of the config (current model {name} has another shape)"
        return model, f"checkpoint {name}"
