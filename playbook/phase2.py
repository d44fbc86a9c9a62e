"""Phase 2 (tasks A, B, C): the seed's training recipes with its exact hyperparameters, each validated.

The seed's flags (architecture, batch/accumulation, precision, schedule, quantization) are kept at every
scale; ``smoke`` shrinks only what makes a run long: steps, window length (144 bits), data and, where a
CPU needs it, the micro-batch. ``full`` is the real run on WikiText (needs the Hugging Face dataset).
"""

from __future__ import annotations

from typing import Any

from .model import Recipe, Step
from .steps import SEED_MODEL, SEED_TRAIN, E, call, completed, patch, reset, scaled, train

SEQ = scaled(144, 1152)  # bits per window: 16 / 128 bytes (two chunks of 128 at smoke)
WIKI2 = {"source": "hf", "hf_name": "wikitext", "hf_config": "wikitext-2-raw-v1", "max_bytes": None}
WIKI103 = {"source": "hf", "hf_name": "wikitext", "hf_config": "wikitext-103-raw-v1", "max_bytes": None}
RUN = {"eval_every": scaled(1000, 500), "eval_batches": scaled(1, 8), "save_every": scaled(1000, 1000)}

# The seed playbook's flags, verbatim (batch_size is the seed's value; smoke shrinks it below).
A_MODEL = {"layers": 8, "d_model": 256, "nhead": 8, "causal": True, "chunk_size": 128, "act": True,
           "reversible": True, "checkpointing": True, "full_attn_logging": False}
A_TRAIN = {"batch_size": 64, "accum_steps": 2, "amp": "bf16", "lr_schedule": "progressive_plateau"}
B_MODEL = {"layers": 8, "d_model": 128, "nhead": 8, "causal": True, "chunk_size": 128, "reversible": True,
           "checkpointing": True}
B_TRAIN = {"quantization": "int8", "qat": True, "batch_size": 128, "accum_steps": 1, "amp": "bf16"}
C_MODEL = {"layers": 16, "d_model": 256, "nhead": 8, "causal": True, "chunk_size": 128, "act": True,
           "reversible": True, "checkpointing": True}
C_TRAIN = {"batch_size": 48, "accum_steps": 3, "amp": "bf16", "lr_schedule": "progressive_plateau"}

# Task C's precondition thresholds (the seed: "use only after data expansion and schedule retune").
C_MAX_PASSES = 2.0  # the planned updates may read each training bit at most twice


def body(model: dict, train_: dict, data: dict, *, batch: Any, steps: Any, lr: Any, warmup: Any = 0.1) -> dict:
    """A full config patch: what the seed's flags imply (its defaults), its flags, then what the scale changes."""
    return {"model": {**SEED_MODEL, **model, "max_seq_len": SEQ},
            "train": {**SEED_TRAIN, **train_, "batch_size": batch, "steps": steps, "lr": lr, "warmup_frac": warmup,
                      **RUN},
            "data": data}


A_DATA = scaled({"source": "builtin", "max_bytes": 32768}, WIKI2)
# Smoke runs 2 updates, too few for a warm-up, so its LR is tiny: one un-warmed Adam step moves the deep
# reversible/ACT models far (measured on 8 x 256: validation loss 0.69 -> ~2.1 nats/bit at lr 1e-3, ~1.6 at 1e-4).
# Smoke proves that every flag works end to end; learning is what `full` (with its warm-up) is for.
A_BODY = body(A_MODEL, A_TRAIN, A_DATA, batch=scaled(8, 64), steps=scaled(2, 20000), lr=scaled(2e-5, 1e-3),
              warmup=scaled(0.5, 0.05))
B_DATA = scaled({"source": "builtin", "max_bytes": 32768}, WIKI2)
B_BODY = body(B_MODEL, B_TRAIN, B_DATA, batch=scaled(16, 128), steps=scaled(2, 10000), lr=scaled(2e-5, 1e-3),
              warmup=scaled(0.5, 0.05))
C_DATA = scaled({"source": "builtin", "max_bytes": 81920}, WIKI103)
C_BODY = body(C_MODEL, C_TRAIN, C_DATA, batch=scaled(6, 48), steps=scaled(2, 30000), lr=scaled(1.4e-5, 7e-4),
              warmup=scaled(0.5, 0.05))


def flag_checks(model: dict, train_: dict, batch: Any) -> list:
    """The server accepted exactly the seed's flags (batch: the seed's at full, the smoke value at smoke)."""
    out = [E(f"config.model.{k}", "==", v, key=k in ("layers", "d_model")) for k, v in model.items()]
    out += [E(f"config.train.{k}", "==", batch if k == "batch_size" else v) for k, v in train_.items()]
    out.append(E("derived.params", ">", 0))
    return out


def configure(model: dict, train_: dict, full_body: dict) -> Step:
    return patch("cfg", full_body, expect=flag_checks(model, train_, full_body["train"]["batch_size"]),
                 note="Apply the seed's flags (plus this scale's steps, window length, data and batch).")


def trained(*more) -> list:
    return completed(
        E("plan.precision", "==", "bf16", why="amp bf16 as the seed asks (fp32 only where bf16 is unsupported)"),
        E("plan.accum_steps", "==", "$steps.cfg.config.train.accum_steps"),
        E("plan.params", "==", "$steps.cfg.derived.params", key=True),
        E("last_step.loss", "finite", key=True),
        *more)


EVAL_BYTES = scaled(256, 100_000)


def evaluate(max_bytes: Any = EVAL_BYTES) -> Step:
    return call("eval", "evaluate", {"max_bytes": max_bytes}, note="Validate: bits per byte on held-out text.",
                expect=[E("bits_per_byte", "finite", key=True),
                        E("bits_per_byte", "<", scaled(12.0, "$.compressors.gzip"), key=True,
                          why="smoke checks mechanics only: 2 updates cannot learn (uniform guessing is 9), this "
                              "catches divergence or NaN; learning is the sanity recipe's check. full: beats gzip "
                              "on the same bytes"),
                        E("parity_bits_per_byte", "<", scaled(2.0, 0.05),
                          why="full: a trained model pays ~0 bits for the parity bit")])


def recipes() -> list[Recipe]:
    return [
        Recipe(
            id="A", phase=2, title="Baseline 8x256 with ACT, reversible blocks and checkpointing",
            why="Reproduce the validated sweet spot (8 layers x 256, ACT) with the Phase 1 efficiency features on, "
                "then validate it.",
            seed="--layers 8 --d_model 256 --nhead 8 --causal true --chunk_size 128 --act true --reversible true "
                 "--checkpointing true --batch_size 64 --accum_steps 2 --amp bf16 --lr_schedule progressive_plateau "
                 "--full_attn_logging false",
            preconditions=["Phase 1 checks pass: run them first (prompt playbook_phase_1, or "
                           "playbook_step(task_id) for tasks 1-12); no step of this recipe re-checks them."],
            steps=[reset(data_cfg=A_DATA),
                   configure(A_MODEL, A_TRAIN, A_BODY),
                   train(expect=trained(
                       E("plan.lr_schedule", "==", "progressive_plateau"),
                       E("last_step.ponder_cost", ">", 0, why="ACT is active (ponder cost paid)"))),
                   evaluate(),
                   call("sample", "generate", {"prompt": "The ", "max_bytes": scaled(4, 64), "seed": 0},
                        expect=[E("parity_ok", "==", True, why="parity-constrained sampling: every byte decodes"),
                                E("new_bytes", "==", scaled(4, 64))])]),
        Recipe(
            id="B", phase=2, title="CPU-friendly 8x128 build with INT8 export and QAT",
            why="A small model trained quantization-aware and exported to INT8 for CPU inference; validated by "
                "bits per byte before and after quantization.",
            seed="--layers 8 --d_model 128 --nhead 8 --causal true --chunk_size 128 --quantization int8 --qat true "
                 "--reversible true --checkpointing true --batch_size 128 --accum_steps 1 --amp bf16",
            preconditions=["Phase 1 checks pass and Task A validated: run them first (playbook_step(task_id) for "
                           "tasks 1-12 and A); no step of this recipe re-checks them."],
            steps=[reset(data_cfg=B_DATA),
                   configure(B_MODEL, B_TRAIN, B_BODY),
                   train(expect=trained()),
                   evaluate(),
                   call("export", "export_int8", {"eval_bytes": scaled(256, 65536)},
                        note="Quantize to INT8 and measure the quality change on validation text.",
                        expect=[E("size_bytes", ">", 0),
                                E("=$.fp32_size_bytes / $.size_bytes", ">", 3.0, key=True,
                                  why="the INT8 artifact is > 3x smaller than the fp32 weights"),
                                E("bpb_int8", "finite"),
                                E("bpb_delta", "<", scaled(0.5, 0.1), key=True,
                                  why="quantization costs little quality (QAT-trained weights)")])]),
        Recipe(
            id="C", phase=2, title="Cautious scale-up candidate 16x256",
            why="A deeper 16 x 256 model, trained only when the data was expanded and the schedule retuned for it "
                "(the seed's warning); the precondition measures both against Task A and refuses otherwise.",
            seed="--layers 16 --d_model 256 --nhead 8 --causal true --chunk_size 128 --act true --reversible true "
                 "--checkpointing true --batch_size 48 --accum_steps 3 --amp bf16 --lr_schedule progressive_plateau "
                 "(use only after data expansion and schedule retune)",
            preconditions=[
                "Data expansion: C's training text grew vs Task A's at least as much as the parameter count did "
                "(data grows with model size). Checked by step [data] prepare_data(reload=false).",
                f"Data covers the plan: the planned updates read each training bit at most {C_MAX_PASSES:g} times. "
                "Checked by step [data] prepare_data(reload=false).",
                "Schedule retune: peak LR <= Task A's LR x sqrt(A layers / C layers), and warm-up at least as many "
                "updates as Task A's. Checked by step [plan] patch_config(patch=<C's config>).",
                "Otherwise the recipe refuses (say which check failed and its fix); only the user's explicit "
                "request runs it anyway.",
            ],
            steps=[reset(data_cfg=A_DATA),
                   patch("baseline", A_BODY, note="Task A's configuration: the reference for the rules."),
                   call("baseline_data", "prepare_data", {"reload": False}, expect=[E("train_bytes", ">", 0)]),
                   patch("plan", C_BODY, precondition=True,
                         note="Task C's configuration; refuse unless the schedule was retuned.", expect=[
                             E("config.train.lr", "<=",
                               "=$steps.baseline.config.train.lr * sqrt($steps.baseline.config.model.layers"
                               " / $.config.model.layers)", key=True,
                               why="peak LR lowered for depth vs Task A",
                               fix="lower train.lr to at most Task A's lr x sqrt(8/16)"),
                             E("=$.config.train.warmup_frac * $.config.train.steps", ">=",
                               "=$steps.baseline.config.train.warmup_frac * $steps.baseline.config.train.steps",
                               why="warm-up at least as long (in updates) as Task A's",
                               fix="raise train.warmup_frac or plan more updates")]),
                   call("data", "prepare_data", {"reload": False}, precondition=True,
                        note="Measure C's training text; refuse unless the data was expanded.", expect=[
                       E("=$.train_bytes / $steps.baseline_data.train_bytes", ">=",
                         "=$steps.plan.derived.params / $steps.baseline.derived.params", key=True,
                         why="training text grew at least as much as the parameter count vs Task A",
                         fix="expand the data: a larger corpus (full: wikitext-103; or data.source=files/hf with more "
                             "text), or ask the user to override the precondition"),
                       E("=$steps.plan.config.train.steps * $steps.plan.config.train.batch_size"
                         " * $steps.plan.config.train.accum_steps * $steps.plan.config.model.max_seq_len"
                         " / (9 * $.train_bytes)", "<=", C_MAX_PASSES, key=True,
                         why="passes over the training data planned by this run",
                         fix="plan fewer updates (train.steps) or add data")]),
                   configure(C_MODEL, C_TRAIN, C_BODY),
                   train(expect=trained(
                       E("plan.lr_schedule", "==", "progressive_plateau"),
                       E("last_step.ponder_cost", ">", 0, why="ACT is active"))),
                   evaluate()]),
    ]

