"""Models that leave the machine: a pretrained folder, the Hugging Face Hub, and loading either back.

A pretrained folder is a checkpoint directory (``checkpoint.py``'s format, kind ``pretrained``) holding only what a
user of the model needs, plus what the Hub shows::

    model.safetensors  the weights to use: the EMA average when the run kept one, else the training weights
    meta.json          the checkpoint metadata (format, RunConfig, update, val_bpb); no optimizer, no RNG
    config.json        the RunConfig alone, for the Hub and other tools
    README.md          the model card (``model_card.py``), numbers measured on the folder as written
    loss_curve.png     the curve the card embeds (from the run's event logs)
    provenance.json    the command lines or tool calls that trained it (``provenance.py``)

Reusing the checkpoint format rather than adding a second one means every loader (``load_model``, evaluate,
generate, export-int8, the server's checkpoint list) reads a pulled model as it is, and the round trip is exact:
the same tensors in the same safetensors layout. Only safetensors and JSON are read back; nothing is unpickled.

``save_pretrained`` writes the folder, ``push_to_hub`` writes it to a temporary folder and uploads it
(``create_repo`` + ``upload_folder``), ``pull`` downloads a repo into a folder (``snapshot_download``) and
``from_pretrained`` loads a folder or a repo id. The CLI's push/pull and the MCP hub tools call these.

Tokens: huggingface_hub reads ``HF_TOKEN`` or its login cache (``hf auth login``); nothing here takes a token as an
argument, returns one or writes one into a message. ``HF_ENDPOINT`` is read at every call, so a test (or a mirror)
can point it elsewhere after import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from . import provenance
from .config import DataConfig, RunConfig
from .model_card import CardFacts, DataFacts, Measured

if TYPE_CHECKING:
    from .model import BitTransformerLM

log = logging.getLogger(__name__)

KIND = "pretrained"
CONFIG_FILE, CARD_FILE, CURVE_FILE = "config.json", "README.md", "loss_curve.png"
HUB_FILES = ("model.safetensors", "meta.json", CONFIG_FILE, CARD_FILE, CURVE_FILE, provenance.FILE)
# Held-out bytes the card's figure is measured on (as the evaluate tool's default). Measured on one thread: the
# default model scores 16 KiB in 0.4 s CPU; the compressors, given the training split (up to 1 MiB), take ~1 s.
DEFAULT_EVAL_BYTES = 16384
KEPT_STATE = ("update", "epoch", "val_loss", "val_bpb")  # what a user of the model sees; no RNG, no data position
TOKEN_HELP = ("set HF_TOKEN in the environment to a token with {access} access "
              "(https://huggingface.co/settings/tokens), or run `hf auth login`")


class HubError(RuntimeError):
    """The Hub refused or could not be reached; the message says what to do (never holds a token)."""


class PretrainedInfo(BaseModel):
    """What ``save_pretrained`` wrote and measured."""

    path: str | None = Field(None, description="The folder (None after a push: it was temporary).")
    files: list[str]
    params: int
    ema: bool = Field(description="The weights are the run's EMA average.")
    measured: Measured | None = None
    not_measured: str | None = None


class PushResult(PretrainedInfo):
    repo_id: str
    url: str
    commit: str | None = None
    private: bool


class PullResult(BaseModel):
    repo_id: str
    path: str
    files: list[str]
    params: int
    commit: str = Field(description="The commit downloaded.")


DataLoader = Callable[[DataConfig], Any]  # DataConfig -> data.Corpus (the CLI's cache or the server's)


# --------------------------------------------------------------------------------------------- the folder


def _run_dir(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _source(d: DataConfig) -> str:
    if d.source == "hf":
        return f"hf:{d.hf_name}" + (f":{d.hf_config}" if d.hf_config else "")
    return ", ".join(Path(p).name for p in d.paths) if d.source == "files" else d.source


def _replaceable(target: Path) -> None:
    """Refuse to replace anything but a model folder or an empty one (``--local ~`` must not empty a home)."""
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and not (target / "meta.json").is_file()):
        raise ValueError(f"{target} exists and is not a model folder; give a new or empty folder (an earlier "
                         "pretrained folder or pull is replaced)")


def _measure(model: BitTransformerLM, cfg: RunConfig, load_data: DataLoader | None,
             eval_bytes: int) -> tuple[Measured | None, DataFacts, str | None]:
    """Bits per byte on the start of the validation split, with the compressors given the training split."""
    from .baselines import training_context
    from .evaluate import evaluate_bits

    facts = DataFacts(source=_source(cfg.data))
    if load_data is None:
        return None, facts, "no corpus given"
    try:
        corpus = load_data(cfg.data)
    except Exception as exc:  # the folder needs no data: the card says why there is no figure
        log.warning("model card: the corpus did not load", exc_info=True)
        return None, facts, f"the training corpus did not load ({type(exc).__name__}: {str(exc)[:200]})"
    # The config's spelling (file names, not the machine's absolute paths): the card is published.
    facts = DataFacts(source=facts.source, n_bytes=corpus.n_bytes, train_bytes=corpus.n_train_bytes,
                      val_bytes=corpus.n_val_bytes)
    if eval_bytes <= 0:
        return None, facts, "eval_bytes=0"
    if corpus.n_val_bytes < 1:
        return None, facts, "the validation split is empty"
    report = evaluate_bits(model, corpus.val, max_bytes=eval_bytes, telemetry=False,
                           compressor_context=training_context(corpus.train))
    return Measured(bits_per_byte=report.bits_per_byte, compressors=report.compressors, eval_bytes=report.n_bytes,
                    context_bytes=report.compressor_context_bytes, bound=report.bound), facts, None


def _curve(src: Path, run: Path, prov: provenance.Provenance, title: str, baselines: dict[str, float]) -> bytes | None:
    """The loss-curve PNG from the run's event logs; a pretrained source's own PNG when it has no logs."""
    from .loss_curve import loss_curve_png, read_points

    logs = [run / inv.metrics for inv in prov.invocations if inv.metrics] or [run / "metrics.jsonl"]
    points = read_points(list(dict.fromkeys(logs)))
    if points.steps or points.evals:
        return loss_curve_png(points, title=title, baselines=baselines)
    own = src / CURVE_FILE
    return own.read_bytes() if own.is_file() else None


def save_pretrained(checkpoint: str | Path, out: str | Path, *, name: str | None = None,
                    load_data: DataLoader | None = None, eval_bytes: int = DEFAULT_EVAL_BYTES) -> PretrainedInfo:
    """Write the pretrained folder of ``checkpoint`` (a checkpoint, run or pretrained folder) at ``out``.

    ``name`` titles the card (the repo id; default: the folder's name). ``load_data`` loads the checkpoint's
    corpus; the model as written to ``out`` is then scored on the first ``eval_bytes`` validation bytes. The folder
    is assembled beside ``out`` and moved into place whole; an existing ``out`` is replaced.
    """
    from .checkpoint import (
        averaged_model,
        load_checkpoint,
        load_model,
        replace_dir,
        resolve_checkpoint,
        save_checkpoint,
        write_text_atomic,
    )
    from .ema import ema_state
    from .model_card import build_card

    src, target = resolve_checkpoint(checkpoint), Path(out).absolute()
    if target == src.absolute() or src.absolute().is_relative_to(target):
        raise ValueError(f"out {target} would overwrite the checkpoint it is made from; pick another folder")
    _replaceable(target)
    loaded = load_checkpoint(src)
    ema = bool(ema_state(loaded.tensors))
    model, cfg = averaged_model(loaded), loaded.config
    state = {k: loaded.state[k] for k in KEPT_STATE if k in loaded.state}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    stage = staging / target.name  # meta.json names the checkpoint after its folder
    try:
        save_checkpoint(stage, model=model, config=cfg, state=state, kind=KIND, update_latest=False)
        write_text_atomic(stage / CONFIG_FILE, cfg.model_dump_json(indent=1))
        written, _ = load_model(stage)  # measure what a user of the folder gets, not the in-memory model
        measured, data, why = _measure(written, cfg, load_data, eval_bytes)
        run = _run_dir(src)
        prov = provenance.read(run)
        if not prov.invocations:  # a pretrained folder carries its run's record
            prov = provenance.read(src)
        title = name or target.name
        png = _curve(src, run, prov, title, measured.compressors if measured else {})
        if png is not None:
            (stage / CURVE_FILE).write_bytes(png)
        if prov.invocations:
            write_text_atomic(stage / provenance.FILE, prov.model_dump_json(indent=1, exclude_none=True))
        facts = CardFacts(name=title, config=cfg, params=written.num_parameters(), ema=ema,
                          update=state.get("update"), val_bpb=state.get("val_bpb"), data=data, measured=measured,
                          not_measured=why, curve=CURVE_FILE if png is not None else None, provenance=prov)
        write_text_atomic(stage / CARD_FILE, str(build_card(facts)))
        replace_dir(stage, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PretrainedInfo(path=str(target), files=sorted(f for f in HUB_FILES if (target / f).is_file()),
                          params=facts.params, ema=ema, measured=measured, not_measured=why)


# --------------------------------------------------------------------------------------------- the Hub


def folder_name(repo_id: str) -> str:
    """``owner/name`` -> ``owner--name``: one path component, as the Hub's own cache spells it."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", repo_id.strip("/").replace("/", "--"))[:80]


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _describe(endpoint: str | None) -> str:
    return endpoint or "https://huggingface.co"


def _scrub(text: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text


@contextlib.contextmanager
def hub_errors(repo_id: str, action: str) -> Iterator[None]:
    """Turn huggingface_hub's failures into a HubError that says what to do."""
    import httpx2
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    where = _describe(_endpoint())
    access = "write" if action.startswith("push") else "read"
    offline = (f"cannot reach the Hugging Face Hub at {where} to {action} {repo_id!r}: check the network "
               "(or HF_ENDPOINT); nothing was changed")
    try:
        yield
    except HFValidationError as err:
        raise HubError(f"repo_id {repo_id!r} is not valid: use 'owner/name' ({_scrub(str(err))[:200]})") from err
    except RepositoryNotFoundError as err:
        raise HubError(f"no model repo {repo_id!r} on {where}, or it is private and HF_TOKEN cannot read it; check "
                       "the name, or set HF_TOKEN to a token with access") from err
    except HfHubHTTPError as err:
        code = getattr(getattr(err, "response", None), "status_code", None)
        if code in (401, 403):
            raise HubError(f"the Hub refused to {action} {repo_id!r} ({code}): the token is missing, invalid or "
                           f"lacks access; {TOKEN_HELP.format(access=access)}") from err
        raise HubError(f"the Hub failed to {action} {repo_id!r} (HTTP {code}): "
                       f"{_scrub(str(err)).splitlines()[0][:200]}") from err
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as err:
        raise HubError(offline + (" (HF_HUB_OFFLINE is set)" if isinstance(err, OfflineModeIsEnabled) else "")) \
            from err
    except (httpx2.TransportError, ConnectionError) as err:
        raise HubError(f"{offline} ({type(err).__name__})") from err


def require_token(repo_id: str) -> None:
    """Fail at once, naming HF_TOKEN, when no token is set (before any evaluation or upload)."""
    from huggingface_hub import get_token

    if not get_token():
        raise HubError(f"no Hugging Face token to push {repo_id!r}: {TOKEN_HELP.format(access='write')}")


def upload(folder: str | Path, repo_id: str, *, private: bool = False,
           message: str = "Upload BitTransformerLM") -> tuple[str, str | None]:
    """Create ``repo_id`` if needed and upload ``folder``; (repo url, commit id). Needs a token with write access."""
    from huggingface_hub import HfApi

    require_token(repo_id)
    api = HfApi(endpoint=_endpoint())
    with hub_errors(repo_id, "push to"):
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message,
                                   allow_patterns=list(HUB_FILES))
    return str(url), getattr(commit, "oid", None)


def push_to_hub(checkpoint: str | Path, repo_id: str, *, private: bool = False, load_data: DataLoader | None = None,
                eval_bytes: int = DEFAULT_EVAL_BYTES,
                lock: contextlib.AbstractContextManager | None = None) -> PushResult:
    """``save_pretrained`` into a temporary folder, then ``upload`` it to ``repo_id``. ``lock`` is held around the
    model work only, not the upload (the server's engine lock)."""
    require_token(repo_id)  # before the evaluation: fail in a second, not after it
    with tempfile.TemporaryDirectory(prefix="bt-push-") as tmp:
        with lock or contextlib.nullcontext():
            info = save_pretrained(checkpoint, Path(tmp) / "model", name=repo_id, load_data=load_data,
                                   eval_bytes=eval_bytes)
        url, commit = upload(Path(tmp) / "model", repo_id, private=private)
    return PushResult(**{**info.model_dump(), "path": None}, repo_id=repo_id, url=url, commit=commit,
                      private=private)


def download(repo_id: str, *, revision: str | None = None, local_dir: Path | None = None) -> tuple[str, str]:
    """(folder, commit) of ``repo_id`` at ``revision``, in ``local_dir`` or else the Hub's cache. Its file list is
    checked first, so a repo that is not a BitTransformerLM model is refused before anything is downloaded."""
    from huggingface_hub import HfApi, snapshot_download

    with hub_errors(repo_id, "download"):
        info = HfApi(endpoint=_endpoint()).model_info(repo_id, revision=revision)
        files = {s.rfilename for s in info.siblings or []}
        if not {"meta.json", "model.safetensors"} <= files:
            raise HubError(f"{repo_id!r} is not a BitTransformerLM model (no meta.json and model.safetensors); "
                           "push one with `bit-transformer push` or push_to_hub")
        path = snapshot_download(repo_id, revision=info.sha, local_dir=local_dir, allow_patterns=list(HUB_FILES),
                                 endpoint=_endpoint())  # the commit just listed, even if the branch moves on
    return path, str(info.sha)


def pull(repo_id: str, out: str | Path, *, revision: str | None = None) -> PullResult:
    """Download ``repo_id`` into the folder ``out`` (replaced whole once complete and loadable)."""
    from .checkpoint import load_model, replace_dir

    target = Path(out).absolute()
    _replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        _, commit = download(repo_id, revision=revision, local_dir=stage)
        shutil.rmtree(stage / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        model, _ = load_model(stage)  # a damaged or foreign folder fails here, before it replaces anything
        replace_dir(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return PullResult(repo_id=repo_id, path=str(target), commit=commit, params=model.num_parameters(),
                      files=sorted(f for f in HUB_FILES if (target / f).is_file()))


def from_pretrained(source: str | Path, *, revision: str | None = None,
                    device: str = "cpu") -> tuple[BitTransformerLM, RunConfig]:
    """(model in eval mode, RunConfig) from a pretrained or checkpoint folder, else from a Hub repo id (downloaded
    into huggingface_hub's cache)."""
    from .checkpoint import load_model

    if Path(source).exists():
        return load_model(source, device=device)
    return load_model(download(str(source), revision=revision)[0], device=device)
