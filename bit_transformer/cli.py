"""``bit-transformer``: train, evaluate, generate, scale-up, export-int8, push and pull from the command line.

``train`` takes the playbook's flags verbatim (``--layers 8 --d_model 256 --causal true ...``); they are
derived from the pydantic config (see ``cli_flags.py``), and every flag also takes its kebab-case spelling.
scale-up and export-int8 are the engine's workflows (``scale.scale_up_checkpoint``,
``export.export_int8_checked``), shared with the MCP tools. Results go to stdout (a table, or JSON with
``--json``); progress and notes go to stderr. Exit codes: 0 done, 1 failed, 2 bad arguments,
3 stopped by the safety gate, 130 cancelled (Ctrl-C; a checkpoint is saved first).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .cli_flags import (
    SPELLING_NOTE,
    FlagParser,
    add_run_config_flags,
    build_run_config,
    data_spec,
    parse_bool,
    spell,
)
from .cli_hub import add_hub_commands, cmd_pull, cmd_push
from .config import GROWABLE as GROW
from .config import DataConfig, RunConfig, stored_run_config
from .export import DEFAULT_EVAL_BYTES
from .progress import ProgressBar

EXIT = {"completed": 0, "failed": 1, "gated": 3, "cancelled": 130}


class UsageError(Exception):
    """A mistake in the arguments or inputs: printed as one line, exit code 2."""


# ------------------------------------------------------------------------------------------ helpers


def _print_json(obj: BaseModel | dict) -> None:
    text = obj.model_dump_json(indent=2) if isinstance(obj, BaseModel) else json.dumps(obj, indent=2)
    sys.stdout.write(text + "\n")


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def load_any_model(path: str, device: str = "cpu"):
    """(model, RunConfig | ModelConfig) from a checkpoint dir, a run dir, or an INT8/INT4 artifact."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no checkpoint at {p}")
    if p.is_file() and p.name == "latest":  # the pointer file: load the checkpoint it names
        p = p.parent
    if p.is_file() or (p / "model.int8.safetensors").is_file() or (p / "model.int4.safetensors").is_file():
        from .quantization_int4 import load_quantized  # an export (its directory or its .safetensors file)

        return load_quantized(p)
    from .checkpoint import load_model

    return load_model(p, device=device)


def _checkpoint_config(run_dir: Path) -> RunConfig | None:
    """The RunConfig stored with a run's latest checkpoint; None when it has none yet."""
    from .checkpoint import resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(run_dir)
    except FileNotFoundError:
        return None
    return stored_run_config(json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))["config"])


def _run_config(cfg) -> RunConfig:
    return cfg if isinstance(cfg, RunConfig) else RunConfig(model=cfg)


# ------------------------------------------------------------------------------------------ train


def cmd_train(args: argparse.Namespace, flags: dict[str, str]) -> int:
    from .parallel import dist_env
    from .provenance import Invocation
    from .training import Trainer

    info = dist_env()
    # Under torchrun every rank must agree on the run directory: name it after the launch's run id.
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") if info.enabled else None
    out = Path(args.out or Path("runs") / (run_id or time.strftime("%Y%m%d-%H%M%S")))
    base, model = None, None
    if args.init and args.resume:
        raise UsageError("--init starts a new run from a checkpoint's weights; --resume continues this run: pick one")
    if args.init:  # e.g. after scale-up: its weights and config, a fresh optimizer and schedule
        model, init_cfg = load_any_model(args.init)
        base = _run_config(init_cfg)
    elif args.resume:  # the run's own config is the base; flags still override
        base = _checkpoint_config(out)
    cfg = build_run_config(args, flags, None if args.config else base)
    if model is not None and cfg.model != model.cfg:
        changed = sorted(k for k, v in cfg.model.model_dump().items() if model.cfg.model_dump()[k] != v)
        raise UsageError(f"--init fixes the architecture; drop {', '.join('--' + k for k in changed)} "
                         "(use scale-up to grow a model)")
    out.mkdir(parents=True, exist_ok=True)
    cancel = threading.Event()
    bar = None if args.quiet or not info.is_main else ProgressBar()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_sigint(signum, frame):  # first Ctrl-C: stop at the next step and save; second: abort
            if cancel.is_set():
                raise KeyboardInterrupt
            cancel.set()
            sys.stderr.write("\ncancelling at the next step (Ctrl-C again to abort without saving)\n")

        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        invocation = Invocation(via="cli", command=shlex.join(["bit-transformer", *args.argv]),
                                metrics="metrics.jsonl")  # the model card's "how it was made"
        trainer = Trainer(cfg, out, model=model, callback=bar, cancel=cancel, invocation=invocation)
        result = trainer.fit(resume=args.resume)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if not info.is_main:  # rank 0 reports for the whole run
        return EXIT.get(result.status, 1)
    if args.json:
        _print_json(result)
    else:
        last = result.last_eval
        rows = [("status", result.status + (f" ({result.reason})" if result.reason else "")),
                ("updates", str(result.updates_done)), ("run dir", str(out)),
                ("checkpoint", str(result.checkpoint))]
        if result.last_step is not None:
            rows.append(("last loss", f"{result.last_step.loss:.4f}"))
        if last is not None:
            rows.append(("val bits/byte", f"{last.val_bpb:.4f}"))
        if result.best_val_bpb is not None:
            rows.append(("best val bits/byte", f"{result.best_val_bpb:.4f}"))
        print(_table(rows))
    return EXIT.get(result.status, 1)


# ------------------------------------------------------------------------------------------ evaluate


def _default_cache(checkpoint: Path) -> Path:
    """The training run's bit cache when the checkpoint sits in a run dir, else the user cache dir."""
    for run in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (run / "cache").is_dir() and (run / "checkpoints").is_dir():
            return run / "cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bit_transformer"


def _eval_input(args: argparse.Namespace, cfg: RunConfig) -> tuple[Any, bytes, str]:
    """(bits, compressor context bytes, description) for the evaluate command."""
    from .baselines import training_context
    from .bits import bytes_to_bits

    if args.text is not None:
        return bytes_to_bits(args.text.encode("utf-8")), b"", "--text"
    if args.file is not None:
        return bytes_to_bits(Path(args.file).read_bytes()), b"", args.file
    from .data import load_corpus

    data_cfg = DataConfig.model_validate({**cfg.data.model_dump(), **data_spec(args.data)}) if args.data else cfg.data
    if args.val_fraction is not None:
        data_cfg = data_cfg.model_copy(update={"val_fraction": args.val_fraction})
    cache = Path(args.cache_dir) if args.cache_dir else _default_cache(Path(args.checkpoint))
    corpus = load_corpus(data_cfg, cache)
    if args.split == "train":
        return corpus.train, b"", f"{corpus.source_id} (train split)"
    context = b"" if args.no_compressors else training_context(corpus.train)  # "val given train"
    return corpus.val, context, f"{corpus.source_id} (validation split, compressors given train)"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_bits

    model, cfg = load_any_model(args.checkpoint)
    bits, context, what = _eval_input(args, _run_config(cfg))
    report = evaluate_bits(model, bits, seq_len=args.seq_len, batch_size=args.batch_size, max_bytes=args.max_bytes,
                           amp=args.amp, context_bits=args.context_bits, compressors=not args.no_compressors,
                           compressor_context=context)
    if args.json:
        _print_json(report)
        return 0
    rows = [("input", what), ("bytes", f"{report.n_bytes:,}"), ("bits per byte", f"{report.bits_per_byte:.4f}"),
            ("data bits per byte", f"{report.data_bits_per_byte:.4f}"),
            ("parity bits per byte", f"{report.parity_bits_per_byte:.4f}"),
            ("bit accuracy", f"{report.bit_accuracy:.4f}"),
            ("loss by phase (nats)", " ".join(f"{x:.3f}" for x in report.loss_by_phase))]
    rows += [(f"{name} bits per byte", f"{v:.4f}") for name, v in report.compressors.items()]
    if report.telemetry is not None:
        t = report.telemetry
        rows.append(("telemetry", f"K_pred {t.K_pred:.3f} C_pred {t.C_pred:.3f} S {t.S:.3f}"))
    rows.append(("window", f"{report.seq_len} bits, context {report.context_bits}, {report.precision}, "
                           f"{report.elapsed_s:.1f} s"))
    print(_table(rows))
    return 0


# ------------------------------------------------------------------------------------------ generate


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate

    model, cfg = load_any_model(args.checkpoint)
    safety = cfg.train.safety if isinstance(cfg, RunConfig) else None
    result = generate(model, args.prompt, max_bytes=args.max_bytes, temperature=args.temperature, top_p=args.top_p,
                      seed=args.seed, safety=safety, mode=args.mode, steps=args.steps)
    if args.json:
        _print_json(result)
        return 0
    sys.stdout.write(result.full_text + "\n")
    v = result.verdict
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    sys.stderr.write(f"[{result.new_bytes} bytes, parity {'ok' if result.parity_ok else 'BAD'}, "
                     f"C {fmt(result.C)}, S {fmt(result.S)}, seed {result.seed}, gate "
                     f"{'TRIGGERED: ' + str(v.reason) if v.triggered else 'ok'}]\n")
    return 0


# ------------------------------------------------------------------------------------------ scale-up / export


def cmd_scale_up(args: argparse.Namespace) -> int:
    from .scale import scale_up_checkpoint

    sizes = {k: getattr(args, k) for k in GROW}
    if all(v is None for v in sizes.values()):
        raise UsageError(f"scale-up needs at least one of {', '.join('--' + k for k in GROW)}")
    model, cfg = load_any_model(args.checkpoint)
    done = scale_up_checkpoint(model, _run_config(cfg), args.out, scaled_from=str(args.checkpoint), sizes=sizes,
                               seed=args.seed, new_layer_init=args.new_layer_init)
    if args.json:
        _print_json({"checkpoint": done.path, "model": done.config.model.model_dump(),
                     "report": done.report.model_dump()})
    else:
        print(_table([("checkpoint", done.path)] + [(k, str(v)) for k, v in done.report.model_dump().items()]))
    return 0


def _export_val_bits(args: argparse.Namespace, cfg: RunConfig):
    """Validation bits for export-int8's quality check: the checkpoint's own corpus, through its run's cache."""
    if not args.eval_bytes:
        return None
    from .data import load_corpus

    cache = Path(args.cache_dir) if args.cache_dir else _default_cache(Path(args.checkpoint))
    try:
        return load_corpus(cfg.data, cache).val
    except (OSError, ValueError) as exc:  # the export itself needs no data: say so, and skip the check
        sys.stderr.write(f"export-int8: quality check skipped, the checkpoint's corpus did not load ({exc}); "
                         "pass --cache_dir, or --eval_bytes 0 to skip it quietly\n")
        return None


def cmd_export_int8(args: argparse.Namespace) -> int:
    from .export import export_int8_checked

    model, cfg = load_any_model(args.checkpoint)
    cfg = _run_config(cfg)
    report = export_int8_checked(model, Path(args.out), config=cfg, val_bits=_export_val_bits(args, cfg),
                                 eval_bytes=args.eval_bytes, bits=args.bits, group_size=args.group_size)
    if args.json:
        _print_json(report)
    else:
        print(_table([(k, str(v)) for k, v in report.model_dump().items()]))
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = FlagParser(prog="bit-transformer", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(*spell("--threads"), type=int, metavar="N",
                        help="torch intra-op threads (default: torch's choice; 1 is often fastest for tiny models "
                             "on a busy machine)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (playbook flags verbatim)", allow_abbrev=False,
                           description="Train a BitTransformerLM. Every config field is a flag.",
                           epilog=f"{SPELLING_NOTE} A config flag also takes its section (--model.layers, "
                                  "--train.safety.decay), a data field its bare name (--val_fraction).")
    train.add_argument(*spell("--config"), metavar="FILE.json", help="RunConfig JSON to start from; flags override it")
    train.add_argument(*spell("--data"), nargs="+", metavar="SPEC",
                       help="builtin | file paths or globs | hf:NAME[:CONFIG] (default: the config's data)")
    train.add_argument(*spell("--out"), metavar="DIR", help="run directory (default: runs/<timestamp>)")
    train.add_argument(*spell("--init"), metavar="CHECKPOINT",
                       help="start from this checkpoint's weights and config (e.g. after scale-up), with a fresh "
                            "optimizer and an LR schedule for this run's horizon")
    train.add_argument(*spell("--resume"), type=parse_bool, nargs="?", const=True, default=False, metavar="true|false",
                       help="continue from the run directory's latest checkpoint")
    train.add_argument(*spell("--quiet"), action="store_true", help="no progress bar")
    train.add_argument(*spell("--json"), action="store_true", help="print the TrainResult as JSON")
    flags = add_run_config_flags(train)

    ev = sub.add_parser("evaluate", help="bits per byte, per-phase loss, compressor baselines", allow_abbrev=False)
    ev.add_argument(*spell("--checkpoint"), required=True, metavar="DIR",
                    help="checkpoint dir, run dir or INT8 artifact")
    src = ev.add_mutually_exclusive_group()
    src.add_argument(*spell("--text"), help="evaluate this text")
    src.add_argument(*spell("--file"), metavar="PATH", help="evaluate this file's bytes")
    src.add_argument(*spell("--data"), nargs="+", metavar="SPEC",
                     help="a corpus (as for train); default: the checkpoint's")
    ev.add_argument(*spell("--split"), choices=("val", "train"), default="val", help="corpus split (default: val)")
    ev.add_argument(*spell("--val_fraction"), type=float, help="override the corpus validation fraction")
    ev.add_argument(*spell("--cache_dir"), metavar="DIR",
                    help="bit cache for corpora (default: the run's cache, else ~/.cache/bit_transformer)")
    ev.add_argument(*spell("--seq_len"), type=int, help="window length in bits (default: the model's max_seq_len)")
    ev.add_argument(*spell("--context_bits"), type=int, default=0,
                    help="warm context per window, multiple of 9 (default 0)")
    ev.add_argument(*spell("--batch_size"), type=int, default=16)
    ev.add_argument(*spell("--max_bytes"), type=int, help="evaluate only the first N bytes")
    ev.add_argument(*spell("--amp"), choices=("none", "bf16"), default="none")
    ev.add_argument(*spell("--no_compressors"), action="store_true", help="skip the gzip/bzip2/xz baselines")
    ev.add_argument(*spell("--json"), action="store_true", help="print the EvalReport as JSON")

    gen = sub.add_parser("generate", help="sample text (parity bit set, never sampled)", allow_abbrev=False)
    gen.add_argument(*spell("--checkpoint"), required=True, metavar="DIR")
    gen.add_argument(*spell("--prompt"), default="", help="text to continue")
    gen.add_argument(*spell("--max_bytes"), type=int, default=64)
    gen.add_argument(*spell("--temperature"), type=float, default=1.0, help="0 = greedy")
    gen.add_argument(*spell("--top_p"), type=float, default=1.0)
    gen.add_argument(*spell("--seed"), type=int)
    gen.add_argument(*spell("--mode"), choices=("auto", "causal", "diffusion"), default="auto",
                     help="auto: the model's own (diffusion for a denoising model)")
    gen.add_argument(*spell("--steps"), type=int, default=32, help="diffusion: unmasking rounds (more: slower, better)")
    gen.add_argument(*spell("--json"), action="store_true")

    sc = sub.add_parser("scale-up", help="grow depth/width from a checkpoint", allow_abbrev=False)
    sc.add_argument(*spell("--checkpoint"), required=True, metavar="DIR")
    sc.add_argument(*spell("--out"), required=True, metavar="DIR", help="checkpoint directory to write")
    for name in GROW:
        sc.add_argument(*spell(f"--{name}"), type=int, help=f"new {name} (default: unchanged)")
    sc.add_argument(*spell("--new_layer_init"), choices=("copy", "random"), default="copy",
                    help="added blocks copy the last block (default) or start random; either way their residual "
                         "output projections are zeroed, so they start as identities")
    sc.add_argument(*spell("--seed"), type=int, default=0, help="seed for the freshly initialised parts")
    sc.add_argument(*spell("--json"), action="store_true")

    ex = sub.add_parser("export-int8", help="INT8 (or --bits 4: INT4) artifact for CPU inference", allow_abbrev=False)
    ex.add_argument(*spell("--checkpoint"), required=True, metavar="DIR")
    ex.add_argument(*spell("--out"), required=True, metavar="PATH")
    ex.add_argument(*spell("--bits"), type=int, choices=(4, 8),
                    help="8: int8 per channel; 4: int4 per group (default: 4 if the run's train.quantization is "
                         "int4, else 8)")
    ex.add_argument(*spell("--group_size"), type=int, metavar="G",
                    help="--bits 4: weights per scale/zero point, even, divides the layers' in_features (default: "
                         "the run's train.int4_group_size, 32)")
    ex.add_argument(*spell("--eval_bytes"), type=int, default=DEFAULT_EVAL_BYTES, metavar="N",
                    help="validation bytes scored by the fp32 and the int8 model (bpb_delta); 0 skips the check "
                         f"(default {DEFAULT_EVAL_BYTES})")
    ex.add_argument(*spell("--cache_dir"), metavar="DIR",
                    help="bit cache for the checkpoint's corpus (default: the run's cache, else "
                         "~/.cache/bit_transformer)")
    ex.add_argument(*spell("--json"), action="store_true")
    add_hub_commands(sub)
    return parser, flags


def main(argv: Sequence[str] | None = None) -> int:
    parser, flags = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # train records it (provenance.py)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    commands = {"evaluate": cmd_evaluate, "generate": cmd_generate, "scale-up": cmd_scale_up,
                "export-int8": cmd_export_int8, "push": cmd_push, "pull": cmd_pull}
    try:
        if args.command == "train":
            return cmd_train(args, flags)
        return commands[args.command](args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        sys.stderr.write(f"bit-transformer {args.command}: invalid configuration: {problems}\n")
        return 2
    except (UsageError, FileNotFoundError, ValueError) as exc:
        if os.environ.get("BIT_TRANSFORMER_DEBUG"):
            raise
        sys.stderr.write(f"bit-transformer {args.command}: {exc}\n")
        return 2

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
