"""Model tools: evaluate, generate, export_int8, scale_up, list_checkpoints, load_checkpoint, list_exports, delete.

They run in the server process on a worker thread (sync tools), serialized by ``Engine.lock``; torch
releases the GIL in its kernels, so job polling stays responsive meanwhile.
"""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import Field

from bit_transformer.export import DEFAULT_EVAL_BYTES

from ..config_ops import diff
from ..engine import SCALE_RUN
from ..views import (
    ChangedField,
    CheckpointList,
    CheckpointView,
    DeleteResult,
    EvalResult,
    ExportList,
    ExportResult,
    ExportView,
    GenerateResult,
    LoadResult,
    ScaleResult,
    plan_brief,
)
from .common import guarded, read_only, writes
from .compact import reply

# Many hosts time a tool call out near 60 s: stop sampling before that and say so (the result's `stopped`).
GENERATE_LIMIT_S = 40.0

Checkpoint = Annotated[str | None, Field(
    max_length=200, description="'<run>/<name>'; default: the current model.")]


def register(server: MCPServer, app) -> None:
    engine = app.engine

    @server.tool(annotations=read_only("Evaluate bits per byte", open_world=True))
    @guarded
    def evaluate(
        split: Annotated[Literal["val", "train"], Field(description="Split when no text is given.")] = "val",
        text: Annotated[str | None, Field(max_length=1_000_000, description="Evaluate this text instead.")] = None,
        max_bytes: Annotated[int, Field(ge=1, le=50_000_000, description="At most this many bytes.")]
        = 16384,
        checkpoint: Checkpoint = None,
        compressors: Annotated[bool, Field(description="Also report gzip/bzip2/xz bits per byte.")] = True,
        detail: Annotated[bool, Field(description="Add by_phase: loss and accuracy per bit position.")] = False,
    ) -> Annotated[CallToolResult, EvalResult]:
        """Bits per byte of the current model or a checkpoint on val, train or given text: bits_per_byte (all 9
        bits), data_bits_per_byte (8 data bits), bit_accuracy. Good: below the gzip/bzip2/xz figures (which get
        the training text as context on val)."""
        from bit_transformer.baselines import training_context
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
                context = training_context(corpus.train) if compressors and split == "val" else b""
                report = evaluate_bits(model, bits, max_bytes=max_bytes, compressors=compressors,
                                       compressor_context=context)
                source = split
        data = report.model_dump(mode="json")
        data.pop("telemetry", None)  # per-layer, per-head numbers grow with depth: telemetry(compute=true) has them
        loss, accuracy = data.pop("loss_by_phase"), data.pop("accuracy_by_phase")
        if detail:
            data["by_phase"] = {"phases": "0-7: data bits, most significant first; 8: parity", "loss_nats": loss,
                                "accuracy": accuracy}
        if data.get("compressors"):
            ctx = data.get("compressor_context_bytes") or 0
            data["compare"] = ("bits_per_byte is the figure to compare with compressors (each one's bits per byte "
                               "of the same bytes" + (f", given {ctx} bytes of the training text as context first)"
                                                      if ctx else ", with no context)"))
        return reply(EvalResult(source=source, checkpoint=name, **data))

    @server.tool(annotations=writes("Generate text", destructive=False))
    @guarded
    def generate(
        prompt: Annotated[str, Field(max_length=100_000, description="Text to continue.")] = "",
        max_bytes: Annotated[int, Field(ge=0, le=4096, description="Bytes to generate.")] = 64,
        temperature: Annotated[float, Field(ge=0.0, le=10.0, description="0 = greedy.")] = 1.0,
        top_p: Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")] = 1.0,
        seed: Annotated[int | None, Field(ge=0, le=2**63 - 1, description="Reproducible output.")] = None,
        checkpoint: Checkpoint = None,
        mode: Annotated[Literal["auto", "causal", "diffusion"], Field(
            description="auto: the model's own; diffusion needs a denoising model.")] = "auto",
        steps: Annotated[int, Field(ge=1, le=1024, description="diffusion: unmasking rounds.")] = 32,
        telemetry: Annotated[bool, Field(description="Add K/C/S telemetry of the generated bits.")] = False,
    ) -> Annotated[CallToolResult, GenerateResult]:
        """Continue a prompt with parity-constrained sampling (every byte decodes): text, parity_ok and the safety
        gate's verdict. A large max_bytes is slow on CPU: start with 64 (sampling stops after 40 s, see stopped)."""
        from bit_transformer.generate import generate as gen

        with engine.lock:
            name, model, _ = engine.model(checkpoint)
            result = gen(model, prompt, max_bytes=max_bytes, temperature=temperature, top_p=top_p, seed=seed,
                         safety=app.config().train.safety, mode=mode, steps=steps, time_limit_s=GENERATE_LIMIT_S)
        data = result.model_dump(mode="json")
        app.ws.update_state(last_generation={"checkpoint": name, "time": time.time(), "C": data.get("C"),
                                             "S": data.get("S"), "telemetry": data.get("telemetry"),
                                             "verdict": data.get("verdict")})
        data.pop("full_text", None)  # = prompt + text
        if not telemetry:
            for key in ("telemetry", "C", "S"):
                data.pop(key, None)
        return reply(GenerateResult(checkpoint=name, **data))

    @server.tool(annotations=writes("Export an INT8 model", destructive=True, idempotent=True, open_world=True))
    @guarded
    def export_int8(
        name: Annotated[str | None, Field(max_length=80, description="Letters, digits, . _ -; default from the "
                                          "checkpoint; replaces one of that name.")] = None,
        checkpoint: Checkpoint = None,
        eval_bytes: Annotated[int, Field(ge=0, le=1_000_000, description="Validation bytes for bpb_delta (0 = "
                                         "skip).")] = DEFAULT_EVAL_BYTES,
        bits: Annotated[Literal[4, 8] | None, Field(description="4: int4, groups of train.int4_group_size. "
                                                   "Default: per train.quantization.")] = None,
    ) -> Annotated[CallToolResult, ExportResult]:
        """Quantize the current model or a checkpoint to INT8 (dynamic, linear layers; QAT weights when train.qat)
        into exports/<name>/. Good result: size_ratio > 3 and a small bpb_delta (int8 - fp32 bits per byte on
        val)."""
        from bit_transformer.export import Int8Info, export_bits, export_int8_checked

        with engine.lock:
            ck_name, model, ck_cfg = engine.model(checkpoint)
            bits = export_bits(ck_cfg, bits)[0]
            name = name or ck_name.replace("/", "-") + f"-int{bits}"
            path = app.ws.export_path(name)
            val = engine.corpus(app.config().data).val if eval_bytes else None
            out = export_int8_checked(model, path, config=ck_cfg, val_bits=val, eval_bytes=eval_bytes, bits=bits)
        size = _size(path)
        _record_source(app.ws, name, ck_name)
        info = out.model_dump(mode="json", include=set(Int8Info.model_fields) - {"path", "files"})  # no server paths
        return reply(ExportResult(
            name=name, path=app.ws.rel(path), size_bytes=size, fp32_size_bytes=out.fp32_bytes,
            size_ratio=round(out.fp32_bytes / size, 3) if size else None, bpb_fp32=out.bpb_fp32,
            bpb_int8=out.bpb_int8, bpb_delta=out.bpb_delta, eval_bytes=out.eval_bytes, info=info, checkpoint=ck_name,
        ))

    @server.tool(annotations=writes("Grow the model", destructive=True, open_world=True))
    @guarded
    def scale_up(
        layers: Annotated[int | None, Field(ge=1, le=256, description="New depth (>= current).")] = None,
        d_model: Annotated[int | None, Field(ge=8, le=16384, description="New width (>= current).")] = None,
        dim_feedforward: Annotated[int | None, Field(ge=8, le=65536, description="New FF width.")] = None,
        nhead: Annotated[int | None, Field(ge=1, le=256, description="New head count (divides d_model).")] = None,
        seed: Annotated[int, Field(ge=0, le=2**31 - 1, description="For the new weights.")] = 0,
        checkpoint: Checkpoint = None,
    ) -> Annotated[CallToolResult, ScaleResult]:
        """Grow the current model in depth and/or width (function-preserving where it can) into a checkpoint,
        the next train()'s model and config.model. Returns the next run's rebuilt plan."""
        if all(v is None for v in (layers, d_model, dim_feedforward, nhead)):
            raise ToolError("nothing to grow: give layers, d_model, dim_feedforward and/or nhead")
        busy = app.jobs.active()
        if busy is not None:
            raise ToolError(f"job {busy.id} is training; scale up after it ends (or cancel_job('{busy.id}'))")
        with engine.lock:
            src, model, _ = engine.model(checkpoint)
            from bit_transformer.scale import scale_up_checkpoint

            sizes = dict(layers=layers, d_model=d_model, dim_feedforward=dim_feedforward, nhead=nhead)
            target = {**model.cfg.model_dump(), **{k: v for k, v in sizes.items() if v is not None}}
            name = f"{SCALE_RUN}/{time.strftime('%Y%m%d-%H%M%S')}-{target['layers']}x{target['d_model']}"
            done = scale_up_checkpoint(model, app.config(), app.ws.checkpoint_path(name), scaled_from=src,
                                       sizes=sizes, seed=seed)
            full, report = done.config, done.report
            with app.config_lock:
                app.save_config(full)
            app.ws.update_state(current_checkpoint=name, init_checkpoint=name)
            plan = None
            try:
                corpus = engine.corpus(full.data)
                plan = engine.plan(full, engine.windows(corpus.train, full.model.max_seq_len))
            except Exception:
                plan = None
        return reply(ScaleResult(
            checkpoint=name, old_model=_shape(model.cfg), new_model=_shape(full.model),
            params_before=report.params_before, params_after=report.params_after, exact=report.exact or None,
            approximate=report.approximate or None, max_logit_change=report.max_logit_change, plan=plan_brief(plan),
            next="train(steps=N) trains the grown model with a schedule rebuilt for that run",
        ))

    @server.tool(annotations=read_only("List checkpoints"))
    @guarded
    def list_checkpoints(
        limit: Annotated[int, Field(ge=1, le=1000, description="Newest checkpoints to list.")] = 12,
        run: Annotated[str | None, Field(max_length=80, description="Only this run's checkpoints.")] = None,
    ) -> Annotated[CallToolResult, CheckpointList]:
        """Saved checkpoints ('<run>/<name>', newest last): update, val_bpb, kind; current = the model
        evaluate/generate/export_int8 use, starts_next_run = the next train()'s start."""
        state = app.ws.load_state()
        rows = [(name, info) for name, info in engine.checkpoints() if run is None or name.split("/", 1)[0] == run]
        out = [CheckpointView(name=name, update=info.update, val_bpb=_r(info.val_bpb), kind=info.kind,
                              damaged=info.damaged, current=True if name == state.current_checkpoint else None,
                              starts_next_run=True if name == state.init_checkpoint else None)
               for name, info in rows[-limit:]]
        return reply(CheckpointList(checkpoints=out, total=len(rows), current=state.current_checkpoint,
                                    init_next=state.init_checkpoint))

    @server.tool(annotations=writes("Load a checkpoint", destructive=True, idempotent=True))
    @guarded
    def load_checkpoint(
        name: Annotated[str, Field(min_length=1, max_length=200, description="'<run>/<name>' from "
                                   "list_checkpoints(), a unique bare name, or 'latest'.")],
    ) -> Annotated[CallToolResult, LoadResult]:
        """Make a checkpoint the current model (evaluate/generate/export_int8) and the next train()'s start (fresh
        optimizer and schedule); config.model becomes its architecture (see changed). To continue a run with its
        optimizer and schedule: train(resume=<run>)."""
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
        return reply(LoadResult(name=name, model=model.cfg.model_dump(mode="json"), params=model.num_parameters(),
                                state=_small(meta.get("state")),
                                changed=[ChangedField(path=p, old=o, new=n) for p, o, n in changes],
                                next="evaluate()/generate() use it now; train(steps=N) continues training from "
                                     "its weights with a fresh optimizer and schedule"))

    @server.tool(annotations=read_only("List exports"))
    @guarded
    def list_exports(
        limit: Annotated[int, Field(ge=1, le=1000, description="Newest exports to list.")] = 12,
    ) -> Annotated[CallToolResult, ExportList]:
        """INT8/INT4 exports (newest last): name, workspace-relative path, size and source checkpoint."""
        sources = _sources(app.ws)
        rows = []
        for d in app.ws.exports_dir.iterdir() if app.ws.exports_dir.is_dir() else []:
            if d.name.startswith(".") or d.is_symlink() or not d.is_dir():
                continue
            rows.append(ExportView(name=d.name, path=app.ws.rel(d), size_bytes=_size(d),
                                   created_at=round(d.stat().st_mtime, 1), checkpoint=sources.get(d.name)))
        rows.sort(key=lambda r: (r.created_at or 0.0, r.name))
        return reply(ExportList(exports=rows[-limit:], total=len(rows)))

    @server.tool(annotations=writes("Delete a run, checkpoint or export", destructive=True, idempotent=True))
    @guarded
    def delete(
        run: Annotated[str | None, Field(max_length=80, description="A run (e.g. 'job-0001'), all its "
                                         "checkpoints.")] = None,
        checkpoint: Annotated[str | None, Field(max_length=200, description="One checkpoint '<run>/<name>'.")]
        = None,
        export: Annotated[str | None, Field(max_length=80, description="One export name.")] = None,
        dry_run: Annotated[bool, Field(description="Only report what would go and the bytes freed.")] = False,
    ) -> Annotated[CallToolResult, DeleteResult]:
        """Permanently remove one run, checkpoint or export (give exactly one) to free disk. Refuses the current
        checkpoint, the next run's start and an active job's run (the error says what to do). Job records stay."""
        given = [(k, v) for k, v in (("run", run), ("checkpoint", checkpoint), ("export", export)) if v]
        if len(given) != 1:
            raise ToolError("give exactly one of run, checkpoint or export (list_checkpoints() / list_exports() "
                            "show the names)")
        kind, value = given[0]
        state = app.ws.load_state()
        training = {j.run: j for j in app.jobs.all() if j.active}  # queued jobs too: a resume needs its run
        protected = {state.current_checkpoint: "the current model (load_checkpoint another one first)",
                     state.init_checkpoint: "the next run's starting model (load_checkpoint another one, or train "
                                            "first)"}
        protected.pop(None, None)
        if kind == "export":
            path = app.ws.export_path(value)
            if not path.is_dir() or path.is_symlink():
                raise ToolError(f"export {value!r} does not exist; list_exports() shows the names")
            label = f"exports/{value}"
        elif kind == "run":
            path = app.ws.run_dir(value)
            if not path.is_dir() or path.is_symlink():
                raise ToolError(f"run {value!r} does not exist; list_checkpoints() shows runs as '<run>/...'")
            if value in training:
                busy = training[value]
                raise ToolError(f"run {value!r} is being trained by {busy.id}; cancel_job('{busy.id}') first")
            for name, why in protected.items():
                if name.split("/", 1)[0] == value:
                    raise ToolError(f"run {value!r} holds {name!r}, {why}")
            label = f"runs/{value}"
        else:
            value, path = engine.resolve(value)
            run_name = value.split("/", 1)[0]
            if value in protected:
                raise ToolError(f"checkpoint {value!r} is {protected[value]}")
            if run_name in training:
                busy = training[run_name]
                raise ToolError(f"checkpoint {value!r} belongs to run {run_name!r}, which {busy.id} is training; "
                                f"cancel_job('{busy.id}') first")
            label = value
        freed = _size(path)
        if not dry_run:
            with engine.lock:
                import shutil

                shutil.rmtree(path)
                if kind == "checkpoint":
                    _repoint_latest(path.parent)
                if kind == "export":
                    _record_source(app.ws, value, None)
                engine.forget(path)
        return reply(DeleteResult(deleted=[label], freed_bytes=freed, dry_run=dry_run,
                                  next="nothing was removed (dry_run)" if dry_run else
                                  "list_checkpoints() / list_exports() show what is left"))


def _r(value: float | None) -> float | None:
    return round(value, 4) if isinstance(value, float) else value


def _shape(model_cfg) -> dict:
    data = model_cfg.model_dump(mode="json")
    return {k: data.get(k) for k in ("layers", "d_model", "nhead", "dim_feedforward")}


SOURCES = ".sources.json"  # exports/<name> -> the checkpoint it was exported from


def _sources(ws) -> dict[str, str]:
    from ..workspace import read_json

    try:
        data = read_json(ws.exports_dir / SOURCES)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _record_source(ws, name: str, checkpoint: str | None) -> None:
    from ..workspace import atomic_write_json

    data = _sources(ws)
    if checkpoint is None:
        data.pop(name, None)
    else:
        data[name] = checkpoint
    with contextlib.suppress(OSError):  # a bookkeeping file: never fail an export or delete on it
        atomic_write_json(ws.exports_dir / SOURCES, data)


def _repoint_latest(root) -> None:
    """After deleting a checkpoint, ``latest`` names the newest one left (or goes away)."""
    from bit_transformer.checkpoint import LATEST, list_checkpoints

    from ..workspace import atomic_write_bytes

    pointer = root / LATEST
    left = [i for i in list_checkpoints(root) if not i.damaged]
    if not left:
        pointer.unlink(missing_ok=True)
        return
    current = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    if current not in {i.name for i in left}:
        newest = max(left, key=lambda i: (i.update or 0, i.created_at))
        atomic_write_bytes(pointer, (newest.name + "\n").encode())


def _small(state: dict | None) -> dict:
    """The checkpoint's training state without bulky internals (RNG, the growth report scale_up returned)."""
    return {k: v for k, v in (state or {}).items() if k not in ("rng", "scale")}


def _size(path) -> int:
    from ..workspace import Workspace

    return Workspace.tree_bytes(path)  # symlinks inside an export are not followed out of the workspace
