"""The sanity fit (after Phase 1): a small model must really learn, and its LR must end where the plan said.

The seed asks to "pair Phase 1 changes with CI that runs a short sanity fit (few hundred steps) to confirm
loss decreases and no scheduler drift". Phase 1's checks prove mechanics and Phase 2 at smoke scale runs
two updates (too few to learn anything), so this is the one recipe that fails for a model that does not
learn. It is budgeted in updates, not seconds, so a slow machine runs longer but checks the same thing.

Measured on the 2-core CI box (``python -m playbook run --task sanity``): the first update's training loss
is 0.688 nats per bit (8.93 bits per byte, the uniform guess of an untrained model); after 300 updates the
validation split scores 5.71 bits per byte (evals 6.60 -> 5.95 -> 5.73 at updates 100/200/300), ~50 s
wall-clock under load. The check asks for a drop of at least 2 bits per byte, leaving ~1.2 of room.
"""

from __future__ import annotations

from .model import Recipe
from .steps import SEED_MODEL, SEED_TRAIN, E, call, completed, onecycle_end, patch, reset, train

UPDATES = 300
MIN_DROP_BPB = 2.0  # measured drop 3.2 bits/byte (8.93 -> 5.71); the rest is room for other machines
# The seed's sanity fit, on the model and optimizer the seed trained (measured figures above are for these).
MODEL = {**SEED_MODEL, "layers": 2, "d_model": 64, "nhead": 4, "max_seq_len": 144, "dropout": 0.0}
TRAIN = {**SEED_TRAIN, "batch_size": 16, "lr": 5e-3, "lr_schedule": "onecycle", "warmup_frac": 0.1, "amp": "none",
         "eval_every": 100, "eval_batches": 4, "save_every": 1000}
EVAL = {"max_bytes": 4096, "compressors": False}


def recipes() -> list[Recipe]:
    return [Recipe(
        id="sanity", phase=1, title="Sanity fit: a few hundred updates really learn, and the LR ends on plan",
        why="CI proof that training works end to end: validation bits per byte fall well below the untrained "
            "value and the schedule's horizon equals the updates run (its final LR at the last update).",
        seed="pair Phase 1 changes with CI that runs a short sanity fit (few hundred steps) to confirm loss "
             "decreases and no scheduler drift",
        steps=[reset(32768),
               patch("untrained_cfg", {"model": MODEL, "train": {**TRAIN, "lr": 1e-9}},
                     note="The same model at a learning rate too small to move it: the untrained reference."),
               train("untrained_job", steps=1, expect=completed()),
               call("untrained", "evaluate", EVAL, note="Validation bits per byte before any learning.",
                    expect=[E("bits_per_byte", ">", 8.5, why="an untrained model guesses uniformly (~9 bits/byte)")]),
               patch("cfg", {"train": {"lr": TRAIN["lr"]}}, note="The real learning rate; a fresh run follows."),
               train(steps=UPDATES, note="Train a few hundred updates from scratch; poll get_job until it ends.",
                     expect=completed(
                         E("plan.total_updates", "==", UPDATES, key=True,
                           why="the run planned exactly the updates asked"),
                         E("plan.scheduler_horizon", "==", "$.result.updates_done", key=True,
                           why="no scheduler drift: the schedule's horizon equals the updates run"),
                         onecycle_end(),
                         E("evals[-1].val_bpb", "<", "=$.evals[0].val_bpb",
                           why="validation kept improving from the first eval (update 100) to the last"))),
               call("eval", "evaluate", EVAL, note="Validation bits per byte of the trained model.", expect=[
                   E("bits_per_byte", "<", f"=$steps.untrained.bits_per_byte - {MIN_DROP_BPB}", key=True,
                     why=f"it learned: at least {MIN_DROP_BPB:g} bits/byte below the untrained value on the same "
                         "bytes (measured 8.93 -> 5.71)")])],
    )]
