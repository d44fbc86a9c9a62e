"""Phase 1 (tasks 1-12): checks that prove, through tool results, that each optimization exists and works.

Every recipe starts from the default config on a small slice of the built-in corpus with a tiny model
(smoke: 2 x 32, 144-bit windows; full: 4 x 128, 576-bit windows), so each check is independent of the
others and of what ran before.
"""

from __future__ import annotations

from .model import Recipe
from .steps import SEED_MODEL, SEED_TRAIN, E, call, completed, onecycle_end, patch, reset, scaled, train

DATA_BYTES = scaled(8192, 1_000_000)
# The seed's checks were written for the flat bit model with AdamW and OneCycle: SEED_* pin those.
MODEL = {**SEED_MODEL, "layers": scaled(2, 4), "d_model": scaled(32, 128), "nhead": 4,
         "max_seq_len": scaled(144, 576), "dropout": 0.0}
TRAIN = {**SEED_TRAIN, "batch_size": scaled(8, 32), "amp": "none", "eval_every": 1000, "save_every": 1000,
         "eval_batches": 2}
PROBE_TEXT = ("Bits in, bits out: the quick brown fox jumps over the lazy dog while the transformer "
              "predicts every next bit of it.")


def base(model: dict | None = None, train_: dict | None = None, *, expect=None, step_id: str = "cfg", note: str = ""):
    """The tiny Phase 1 config plus this check's settings."""
    body = {"model": {**MODEL, **(model or {})}, "train": {**TRAIN, **(train_ or {})}}
    return patch(step_id, body, expect=expect, note=note or "Configure the tiny check model and this task's settings.")


def _start() -> list:
    return [reset(DATA_BYTES)]


def recipes() -> list[Recipe]:
    chunk = {"chunk_size": scaled(32, 128), "overlap": scaled(8, 32)}
    return [
        Recipe(
            id="1", phase=1, title="Configurable batch size and exact OneCycle accounting",
            why="The scheduler horizon must equal the optimizer updates the run really makes: steps per epoch come "
                "from len(DataLoader) for the configured batch size, plus extra_steps, times epochs.",
            seed="DataLoader(batch_size=args.batch_size, ...); steps_per_epoch=len(loader); "
                 "total_updates=epochs*(steps_per_epoch+extra_steps); pass total_updates into configure_optimizer",
            steps=[*_start(),
                   base(train_={"extra_steps": 1}, expect=[
                       E("derived.train_windows", ">", 0),
                       E("derived.plan.steps_per_epoch", "==",
                         "=ceil($.derived.train_windows / $.config.train.batch_size)")]),
                   train(epochs=2, expect=completed(
                       E("plan.steps_per_epoch", "==",
                         "=ceil($steps.cfg.derived.train_windows / $steps.cfg.config.train.batch_size)", key=True,
                         why="steps per epoch = len(DataLoader) = ceil(windows / batch_size)"),
                       E("plan.updates_per_epoch", "==", "=$.plan.steps_per_epoch + 1",
                         why="updates per epoch = steps_per_epoch + extra_steps"),
                       E("plan.total_updates", "==", "=2 * $.plan.updates_per_epoch", key=True,
                         why="total_updates = epochs * (steps_per_epoch + extra_steps)"),
                       E("plan.scheduler_horizon", "==", "$.plan.total_updates", key=True,
                         why="the schedule is built for exactly the planned updates"),
                       onecycle_end()))]),
        Recipe(
            id="2", phase=1, title="Schedule rebuilt for the upcoming plan after scale_up",
            why="After a scale-up the LR schedule must be rebuilt from the next run's real plan, never a "
                "hardcoded horizon (the old dashboard used total_steps=100).",
            seed="When (re)creating OneCycleLR after init/scale_up/download, use computed total_steps from the "
                 "upcoming training plan instead of hardcoded 100",
            steps=[*_start(),
                   base(train_={"steps": scaled(3, 50)}),
                   train("first", expect=completed()),
                   patch("cfg2", {"train": {"steps": scaled(7, 80)}}, note="Plan a different length for the next run."),
                   call("grow", "scale_up", {"layers": scaled(3, 6)}, expect=[
                       E("new_model.layers", "==", scaled(3, 6)),
                       E("params_after", ">", "$.params_before", why="the model really grew"),
                       E("plan.total_updates", "==", "$steps.cfg2.config.train.steps", key=True,
                         why="the rebuilt plan is the upcoming run's"),
                       E("plan.scheduler_horizon", "==", "$.plan.total_updates", why="schedule horizon = that plan"),
                       E("plan.params", "==", "$.params_after", why="the plan is for the grown model")]),
                   train(expect=completed(
                       E("request.init_name", "==", "$steps.grow.checkpoint", why="it trained the grown model"),
                       E("plan.params", "==", "$steps.grow.params_after"),
                       E("plan.scheduler_horizon", "==", "$steps.grow.plan.total_updates", key=True,
                         why="the job's schedule horizon equals what scale_up announced"),
                       E("plan.scheduler_horizon", "!=", 100, why="not the old hardcoded horizon"),
                       onecycle_end("cfg2")))]),
        Recipe(
            id="3", phase=1, title="Mixed precision (bf16 autocast)",
            why="bf16 autocast speeds up attention-heavy training; the job must really run in bf16 and the switch "
                "must turn it off again.",
            seed="with torch.amp.autocast(device_type=..., dtype=torch.bfloat16): logits = model(batch); ...",
            steps=[*_start(),
                   base(train_={"amp": "bf16", "steps": scaled(3, 30)}),
                   train(expect=completed(
                       E("plan.precision", "==", "bf16", key=True, why="the plan chose bf16 autocast"),
                       E("history[*].precision", "==", "bf16", each=True, why="every update ran in bf16"),
                       E("last_step.loss", "finite", why="bf16 training stayed finite"))),
                   patch("fp32", {"train": {"amp": "none"}}, dry_run=True, expect=[
                       E("derived.plan.precision", "==", "fp32", why="amp='none' plans fp32")])]),
        Recipe(
            id="4", phase=1, title="Gradient accumulation",
            why="accum_steps micro-batches make one optimizer update (and one scheduler step), simulating a larger "
                "batch without more memory.",
            seed="--accum_steps; scale loss by 1/accum_steps; optimizer.step() and scheduler.step() every accum_steps",
            steps=[*_start(),
                   base(train_={"accum_steps": 3}),
                   train(epochs=1, expect=completed(
                       E("plan.accum_steps", "==", 3),
                       E("plan.updates_per_epoch", "==", "=ceil($.plan.micro_batches_per_epoch / 3)", key=True,
                         why="optimizer updates = micro-batches / accum_steps"),
                       E("last_step.micro_step", "==", "$.plan.micro_batches_per_epoch", key=True,
                         why="every micro-batch of the epoch was used"),
                       E("last_step.update", "==", "$.plan.updates_per_epoch"),
                       onecycle_end()))]),
        Recipe(
            id="5", phase=1, title="Memory-mapped bit cache and DataLoader workers",
            why="Text is encoded to bits once into a memory-mapped cache; later loads (and DataLoader worker "
                "processes) reuse it instead of converting again.",
            seed="Precompute text->bit tensors; store in a memory-mapped file; Dataset with __len__/__getitem__; "
                 "DataLoader(num_workers>0, persistent_workers=True)",
            steps=[*_start(),
                   base(train_={"num_workers": 1, "steps": 2}),
                   call("first", "prepare_data", {"reload": True}, expect=[
                       E("train_windows", ">", 0), E("cache_path", "matches", r"^cache/")]),
                   call("second", "prepare_data", {"reload": True}, expect=[
                       E("cache_hit", "==", True, key=True, why="the second load is a cache hit"),
                       E("content_hash", "==", "$steps.first.content_hash"),
                       E("cache_path", "==", "$steps.first.cache_path")]),
                   train(expect=completed(
                       E("data.cache_hit", "==", True, key=True, why="the training worker memory-mapped the cache"),
                       E("data.content_hash", "==", "$steps.first.content_hash")))]),
        Recipe(
            id="6", phase=1, title="Compression probability on a cosine ramp",
            why="Training on run-length-compressed samples is phased in from 0 to its target over the warm-up "
                "along a cosine, avoiding early instability.",
            seed="compress_prob = cosine_ramp(global_step, start=0.0, end=0.5, total_steps=warmup_steps)",
            steps=[*_start(),
                   base(train_={"compress_prob": 0.5, "warmup_frac": 0.5, "steps": scaled(8, 40)}),
                   train(expect=completed(
                       E("history[update=1].compress_prob", "==", 0.0, why="the ramp starts at 0"),
                       E("history[update=2].compress_prob", "~=",
                         "=0.5 * (1 - cos(pi * 1 / $.plan.warmup_updates)) / 2", tol=1e-6, key=True,
                         why="on the ramp: start + (end - start) * (1 - cos(pi * step / warmup)) / 2 "
                             "(a linear ramp would give end * step / warmup)"),
                       E("history[update=4].compress_prob", "~=",
                         "=0.5 * (1 - cos(pi * 3 / $.plan.warmup_updates)) / 2", tol=1e-6),
                       E("history[*].compress_prob", "nondecreasing", why="the ramp never goes down"),
                       E("last_step.compress_prob", "~=", 0.5, key=True, why="it reaches the target after warm-up"),
                       E("last_step.compressed_loss", "not null", why="compressed samples were really trained on")))]),
        Recipe(
            id="7", phase=1, title="Safety gate with EMA and burn-in",
            why="Validation loss is smoothed by an EMA and the gate never fires during burn-in, so noisy early "
                "evaluations cause no false stops; after burn-in a bad EMA stops training.",
            seed="ema_val = ema(val_loss, decay=0.9); if step < burn_in_steps: allow; elif ema_val > threshold: gate",
            steps=[*_start(),
                   base(train_={"eval_every": 1, "eval_batches": 1, "steps": scaled(10, 30),
                                "safety": {"burn_in": 4, "decay": 0.9, "loss_threshold": 0.05}},
                        note="A threshold no model reaches this early: only burn-in can keep the gate quiet."),
                   train(expect=[
                       E("status", "==", "gated", key=True, why="after burn-in the gate stopped training"),
                       E("reason", "matches", "safety gate"),
                       E("evals[0:4].gate.triggered", "==", False, each=True, key=True,
                         why="no trigger during the 4 burn-in evaluations"),
                       E("evals[0:4].gate.in_burn_in", "==", True, each=True),
                       E("evals[-1].gate.triggered", "==", True, why="the first evaluation after burn-in triggers"),
                       E("evals", "len ==", 5),
                       E("evals[1].gate.ema.loss", "~=", "=0.9 * $.evals[0].val_loss + 0.1 * $.evals[1].val_loss",
                         tol=1e-6, why="the gate watches an EMA (decay 0.9) of validation loss")])]),
        Recipe(
            id="8", phase=1, title="Selective torch.compile",
            why="torch.compile runs where this torch/Python supports it and is skipped with a clear reason "
                "elsewhere, never failing the run.",
            seed="Enable torch.compile only if torch>=2.1 and python<3.12; else skip with a clear warning",
            steps=[*_start(),
                   base(train_={"compile": True, "steps": 2}),
                   train(expect=completed(
                       E("plan.compile_requested", "==", True),
                       E("plan.compile_reason", "matches", r"^(compiled|skipped: .+)", key=True,
                         why="compile either ran or was skipped with its reason"),
                       E("plan.compile_ran", "in", [True, False], key=True),
                       E("last_step.loss", "finite")))]),
        Recipe(
            id="9", phase=1, title="Attention through SDPA with is_causal",
            why="Full attention calls F.scaled_dot_product_attention with is_causal=True and no dense mask, so "
                "PyTorch can pick its fused (Flash / memory-efficient) kernels.",
            seed="F.scaled_dot_product_attention(q, k, v, is_causal=is_causal); prefer is_causal over boolean masks",
            steps=[*_start(),
                   base(model={"causal": True, "chunk_size": None}),
                   call("probe", "inspect_attention", {"text": PROBE_TEXT}, expect=[
                       E("layers[*].backend", "==", "sdpa", each=True, key=True),
                       E("layers[*].is_causal", "==", True, each=True, key=True),
                       E("layers[*].dense_mask", "==", False, each=True, key=True, why="no dense mask was passed"),
                       E("layers[*].chunked", "==", False, each=True)]),
                   call("bidirectional", "inspect_attention", {"text": PROBE_TEXT, "causal": False}, expect=[
                       E("layers[*].is_causal", "==", False, each=True, why="the flag really drives is_causal"),
                       E("layers[*].dense_mask", "==", False, each=True)])]),
        Recipe(
            id="10", phase=1, title="Cached attention masks",
            why="Chunked attention needs boolean masks; they are built once per shape and reused, not rebuilt "
                "with triu on every forward.",
            seed="mask_cache[(seq_len, device)] = torch.triu(...) built once",
            steps=[*_start(),
                   base(model=chunk, train_={"steps": scaled(3, 20)}),
                   call("probe", "inspect_attention", {"text": PROBE_TEXT}, expect=[
                       E("mask_cache_reused", "==", True, key=True),
                       E("mask_cache_second_pass.misses", "==", 0, why="the second forward built no mask"),
                       E("mask_cache_second_pass.hits", ">=", "=len($.layers)", why="every layer reused it")]),
                   train(expect=completed(
                       E("runtime.mask_cache.misses", "==", "$.runtime.mask_cache.entries", key=True,
                         why="each mask shape was built exactly once in the training worker"),
                       E("runtime.mask_cache.hits", ">=",
                         "=$.plan.total_updates * $steps.cfg.config.model.layers - $.runtime.mask_cache.misses",
                         key=True, why="every layer of every training forward reused the cached mask")))]),
        Recipe(
            id="11", phase=1, title="Stitched chunk attention maps match dense ones",
            why="Chunk maps are placed onto the T x T canvas with start = max(s - overlap, 0); a negative start "
                "used to wrap around and misplace the first chunk's weights.",
            seed="start = max(s - overlap, 0); end = min(s + chunk_size, T); canvas[..., start:end] = ...",
            steps=[*_start(),
                   base(model=chunk),
                   call("causal", "inspect_attention", {"text": PROBE_TEXT}, expect=[
                       E("layers[*].chunked", "==", True, each=True),
                       E("all_stitched_match", "==", True, key=True),
                       E("layers[*].edge_max_abs_diff", "<", 1e-4, each=True, key=True,
                         why="rows at chunk starts (where wrap-around showed) match the dense reference"),
                       E("layers[*].max_abs_diff", "<", 1e-4, each=True)]),
                   call("bidirectional", "inspect_attention", {"text": PROBE_TEXT, "causal": False}, expect=[
                       E("all_stitched_match", "==", True),
                       E("layers[*].edge_max_abs_diff", "<", 1e-4, each=True)])]),
        Recipe(
            id="12", phase=1, title="Full T x T attention logging off by default when chunked",
            why="Stitched T x T maps cost O(T^2) memory and time; chunked runs skip them unless asked, unchunked "
                "runs keep them.",
            seed="Set full_attn_logging=False by default when chunk_size is set",
            steps=[*_start(),
                   base(model={**chunk, "full_attn_logging": None}, expect=[
                       E("config.model.full_attn_logging", "is null", why="nothing set explicitly")]),
                   call("default", "inspect_attention", {"text": PROBE_TEXT}, expect=[
                       E("full_attn_logging_resolved", "==", False, key=True),
                       E("telemetry_returns_maps", "==", False, key=True, why="no T x T maps in a chunked run")]),
                   call("opt_in", "inspect_attention", {"text": PROBE_TEXT, "full_attn_logging": True}, expect=[
                       E("telemetry_returns_maps", "==", True, why="still available when asked for")]),
                   call("unchunked", "inspect_attention", {"text": PROBE_TEXT, "chunk_size": 0}, expect=[
                       E("full_attn_logging_resolved", "==", True, why="unchunked runs log by default")])]),
    ]
