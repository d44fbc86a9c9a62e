"""``bit-transformer push`` / ``pull``: a checkpoint to the Hugging Face Hub with its model card, and back.

Both call ``hub.py`` (as the MCP hub tools do). The token comes only from the environment (``HF_TOKEN``) or
huggingface_hub's login cache, never from a flag, and is never printed. ``push --local DIR`` writes the folder that
would be uploaded and stops there. Exit codes: 0 done, 1 the Hub refused or could not be reached, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_flags import spell


def add_hub_commands(sub) -> None:
    from .hub import DEFAULT_EVAL_BYTES

    push = sub.add_parser("push", help="upload a checkpoint to the Hugging Face Hub with a model card",
                          allow_abbrev=False,
                          description="Write the pretrained folder of a checkpoint (weights, config, model card with "
                                      "measured bits per byte and the loss curve) and upload it. The token comes "
                                      "from HF_TOKEN or `hf auth login`.")
    push.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint dir or run dir")
    push.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    push.add_argument(*spell("--private"), action="store_true", help="create the repo private")
    push.add_argument(*spell("--eval_bytes"), type=int, default=DEFAULT_EVAL_BYTES, metavar="N",
                      help=f"validation bytes the card's bits per byte is measured on; 0 skips it "
                           f"(default {DEFAULT_EVAL_BYTES})")
    push.add_argument(*spell("--local"), metavar="DIR", help="write the folder here and do not upload")
    push.add_argument(*spell("--cache_dir"), metavar="DIR",
                      help="bit cache for the checkpoint's corpus (default: the run's cache, else "
                           "~/.cache/bit_transformer)")
    push.add_argument(*spell("--json"), action="store_true")

    pull = sub.add_parser("pull", help="download a model from the Hugging Face Hub", allow_abbrev=False,
                          description="Download a pushed model into a folder that evaluate, generate and train "
                                      "--init read like a checkpoint.")
    pull.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    pull.add_argument(*spell("--out"), metavar="DIR", help="folder to write (default: pretrained/<owner>--<name>)")
    pull.add_argument(*spell("--revision"), help="branch, tag or commit (default: main)")
    pull.add_argument(*spell("--json"), action="store_true")


def _corpus_loader(args: argparse.Namespace):
    from .cli import _default_cache
    from .data import load_corpus

    cache = Path(args.cache_dir) if args.cache_dir else _default_cache(Path(args.checkpoint))
    return lambda data_cfg: load_corpus(data_cfg, cache)


def _report(args: argparse.Namespace, result) -> None:
    from .cli import _print_json, _table

    if args.json:
        _print_json(result)
        return
    rows = [(k, str(v)) for k, v in result.model_dump(exclude={"measured"}, exclude_none=True).items()]
    m = getattr(result, "measured", None)
    if m is not None:
        rows.append(("bits per byte", f"{m.bits_per_byte:.4f} on {m.eval_bytes:,} validation bytes"))
        rows += [(f"{k} bits per byte", f"{v:.4f}") for k, v in m.compressors.items()]
    print(_table(rows))


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import HubError, push_to_hub, save_pretrained

    load = _corpus_loader(args)
    try:
        if args.local:
            result = save_pretrained(args.checkpoint, args.local, name=args.repo_id, load_data=load,
                                     eval_bytes=args.eval_bytes)
        else:
            result = push_to_hub(args.checkpoint, args.repo_id, private=args.private, load_data=load,
                                 eval_bytes=args.eval_bytes)
    except HubError as exc:
        sys.stderr.write(f"bit-transformer push: {exc}\n")
        return 1
    _report(args, result)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from .hub import HubError, folder_name, pull

    out = Path(args.out or Path("pretrained") / folder_name(args.repo_id))
    try:
        result = pull(args.repo_id, out, revision=args.revision)
    except HubError as exc:
        sys.stderr.write(f"bit-transformer pull: {exc}\n")
        return 1
    _report(args, result)
    return 0
