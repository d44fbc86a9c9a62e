"""Checkpoints: safetensors for tensors, JSON for everything else, atomic on disk, no pickle.

A checkpoint is a directory::

    <root>/<name>/model.safetensors      model weights (state_dict)
                  optimizer.safetensors  optimizer tensors; non-tensor parts in its JSON metadata
                  extra.safetensors      extra tensors (the trainer's torch RNG states; the EMA weights as
                                         ``ema.<name>`` with train.ema_decay), optional
                  meta.json              format, config, training state, scheduler state, file list
    <root>/latest                        text file naming the newest complete checkpoint

It is written into a hidden temporary directory, every file fsynced, then renamed into place (an
existing checkpoint of the same name is swapped out, then removed); ``latest`` is replaced with
``os.replace``. A crash therefore leaves either the old or the new checkpoint, never half of one.
Loading uses ``safetensors`` and ``json`` only; ``torch.load`` is never called.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import RunConfig, stored_run_config
from .factory import build_model
from .model import BitTransformerLM
from .records import CheckpointInfo

FORMAT = "bit-transformer-checkpoint/1"
LATEST = "latest"


class CheckpointDamaged(ValueError):
    """A checkpoint with a truncated, corrupt or missing file; the message names both and says what to do."""

    def __init__(self, ckpt: str | Path, file: str, detail: str):
        self.checkpoint, self.file, self.detail = Path(ckpt), file, detail
        super().__init__(f"checkpoint {checkpoint_label(ckpt)!r} is damaged: {file} {detail}. It cannot be "
                         "loaded; use another checkpoint from list_checkpoints() (damaged ones are marked "
                         "'damaged'), or train again")


def checkpoint_label(ckpt: str | Path) -> str:
    """``<run>/<name>`` for ``<run>/checkpoints/<name>`` (how the server names it), else the folder name."""
    p = Path(ckpt)
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "checkpoints" else p.name


class LoadedCheckpoint(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: str
    model: BitTransformerLM
    config: RunConfig
    state: dict[str, Any]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    tensors: dict[str, torch.Tensor]
    info: CheckpointInfo


# --------------------------------------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + fsync + os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------- optimizer


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """torch optimizer state_dict -> (tensors, safetensors string metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state_dict["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": json.dumps(state_dict["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    for pid, values in json.loads(meta.get("scalars", "{}")).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}


def _read_safetensors(path: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise CheckpointDamaged(path.parent, path.name, f"cannot be read ({str(err)[:200]})") from err


MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file, or None. Cheap: reads only the header.

    Layout: 8-byte little-endian header length N, N bytes of JSON naming each tensor's byte range
    (``data_offsets``), then the data; the file must end exactly where the last range does.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"is truncated ({size} bytes, shorter than a safetensors header)"
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                return f"is truncated or corrupt (header of {n} bytes in a file of {size} bytes)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return "is missing"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    except (ValueError, UnicodeDecodeError):
        return "is corrupt (its header is not valid JSON)"
    if not isinstance(header, dict):
        return "is corrupt (its header is not a JSON object)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "is corrupt (its header lists no valid tensor offsets)"
    expected = 8 + n + end
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    if size > expected:
        return f"is corrupt ({size - expected} bytes more than its header describes)"
    return None


def checkpoint_problem(ckpt: Path, meta: dict[str, Any]) -> tuple[str, str] | None:
    """(file, what is wrong) for the first damaged tensor file of a checkpoint, or None when all are intact."""
    files = meta.get("files") or ["model.safetensors"]
    for name in files if isinstance(files, list) else ["model.safetensors"]:
        problem = safetensors_problem(ckpt / str(name))
        if problem:
            return str(name), problem
    return None


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    # clone(): safetensors refuses tensors that share storage (e.g. views into one buffer).
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path), metadata=metadata)


# --------------------------------------------------------------------------------------------- save / load


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP


def save_checkpoint(dir: str | Path, *, model: torch.nn.Module, config: RunConfig, optimizer=None,
                    scheduler=None, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
                    kind: str = "manual", update_latest: bool = True, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Atomically write a checkpoint directory at ``dir``; returns its path.

    ``state`` must be JSON-serializable (step, epoch, data position, gate, RNG of python/numpy...).
    ``scheduler`` is anything with a JSON ``state_dict()`` (see ``schedule.py``). ``tensors`` are
    extra named tensors (e.g. torch RNG states). The parent's ``latest`` pointer names this
    checkpoint unless ``update_latest`` is false. ``model_state`` / ``optimizer_state`` replace
    ``model.state_dict()`` / ``optimizer.state_dict()`` when the caller gathered them (sharded training).
    """
    target = Path(dir)
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    net = _unwrap(model)
    model_cfg = getattr(net, "cfg", config.model)
    config = config.model_copy(update={"model": model_cfg})
    tmp = root / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = ["model.safetensors"]
        _save_tensors(model_state if model_state is not None else net.state_dict(), tmp / "model.safetensors")
        if optimizer_state is None and optimizer is not None:
            optimizer_state = optimizer.state_dict()
        if optimizer_state is not None:
            opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
            _save_tensors(opt_tensors, tmp / "optimizer.safetensors", opt_meta)
            files.append("optimizer.safetensors")
        if tensors:
            _save_tensors(tensors, tmp / "extra.safetensors")
            files.append("extra.safetensors")
        meta = {
            "format": FORMAT,
            "name": target.name,
            "kind": kind,
            "created_at": time.time(),
            "params": sum(p.numel() for p in net.parameters()),
            "qat": bool(getattr(net, "qat_prepared", False)),
            "config": config.model_dump(mode="json"),
            "state": state,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "files": files,
            "torch": torch.__version__,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, allow_nan=True), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if update_latest:
        write_text_atomic(root / LATEST, target.name + "\n")
    return target


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the complete directory ``tmp`` to ``target`` (a sibling); an existing ``target`` is swapped out, then
    removed, so a crash leaves the old or the new directory, never half of one."""
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, a checkpoints root (follows ``latest``), or a run dir with ``checkpoints/``."""
    p = Path(path)
    if (p / "meta.json").is_file():
        return p
    for root in (p, p / "checkpoints"):
        pointer = root / LATEST
        if pointer.is_file():
            target = root / pointer.read_text(encoding="utf-8").strip()
            if (target / "meta.json").is_file():
                return target
    raise FileNotFoundError(
        f"no checkpoint at {p}: expected a directory with meta.json, or a checkpoints root with a 'latest' file"
    )


def _read_meta(ckpt: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointDamaged(ckpt, "meta.json", f"is not readable JSON ({str(err)[:120]})") from err
    if not isinstance(meta, dict):
        raise CheckpointDamaged(ckpt, "meta.json", "does not hold a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{ckpt} is not a {FORMAT} checkpoint (format={meta.get('format')!r})")
    return meta


def _info(ckpt: Path, meta: dict[str, Any], latest: str | None = None) -> CheckpointInfo:
    state = meta.get("state") or {}
    return CheckpointInfo(
        name=ckpt.name, path=str(ckpt), update=state.get("update"), epoch=state.get("epoch"),
        val_loss=state.get("val_loss"), val_bpb=state.get("val_bpb"), kind=meta.get("kind", "manual"),
        created_at=meta.get("created_at", 0.0), params=meta.get("params"), is_latest=ckpt.name == latest,
    )


def build_run_model(config: RunConfig, qat: bool = False) -> BitTransformerLM:
    """A fresh model of ``config.model``, QAT-prepared when ``qat``; refuses one this machine cannot hold."""
    from .memory_limits import check_fits

    check_fits(config, purpose="building")  # ModelTooLarge (estimate, limit, fix) before any allocation
    model = build_model(config.model)
    if not qat:
        return model
    from .quantization import apply_qat  # lazy: only QAT runs need it

    return apply_qat(model, config.train)


def load_checkpoint(dir: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load everything a checkpoint holds (model rebuilt from its config; strict weight match)."""
    ckpt = resolve_checkpoint(dir)
    meta = _read_meta(ckpt)
    problem = checkpoint_problem(ckpt, meta)  # cheap header/size check first: a clear error, no half-load
    if problem:
        raise CheckpointDamaged(ckpt, *problem)
    try:
        config = stored_run_config(meta["config"])
    except (KeyError, ValidationError) as err:
        raise CheckpointDamaged(ckpt, "meta.json", f"holds no valid run config ({str(err)[:160]})") from err
    model = build_run_model(config, qat=meta.get("qat", False))
    weights, _ = _read_safetensors(ckpt / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt} does not match its config: missing={missing[:5]}, "
                         f"unexpected={unexpected[:5]}")
    model.to(device)
    opt_state = None
    if (ckpt / "optimizer.safetensors").is_file():
        opt_state = _unflatten_optimizer(*_read_safetensors(ckpt / "optimizer.safetensors"))
    tensors = _read_safetensors(ckpt / "extra.safetensors")[0] if (ckpt / "extra.safetensors").is_file() else {}
    return LoadedCheckpoint(path=str(ckpt), model=model, config=config, state=meta.get("state") or {},
                            optimizer_state=opt_state, scheduler_state=meta.get("scheduler"), tensors=tensors,
                            info=_info(ckpt, meta))


def load_model(dir: str | Path, device: str | torch.device = "cpu") -> tuple[BitTransformerLM, RunConfig]:
    """Just the model (in eval mode) and its run config; the EMA weights when the run kept them."""
    loaded = load_checkpoint(dir, device)
    return averaged_model(loaded), loaded.config


def averaged_model(loaded: LoadedCheckpoint) -> BitTransformerLM:
    """The loaded model in eval mode, holding the EMA weights when the run kept them (train.ema_decay): the
    averaged weights are the ones to evaluate, export and publish."""
    from .ema import ema_state

    averaged = ema_state(loaded.tensors)
    if averaged:
        loaded.model.load_state_dict(averaged)
    return loaded.model.eval()


def list_checkpoints(root: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints under ``root`` (or ``root/checkpoints``), oldest first; temp dirs skipped."""
    base = Path(root)
    if not base.is_dir():
        return []
    if not any((d / "meta.json").is_file() for d in base.iterdir() if d.is_dir()) and (base / "checkpoints").is_dir():
        base = base / "checkpoints"
    latest = (base / LATEST).read_text(encoding="utf-8").strip() if (base / LATEST).is_file() else None
    out = []
    for d in sorted(base.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").is_file():
            try:
                meta = _read_meta(d)
            except CheckpointDamaged as err:  # listed, marked, never offered as loadable
                out.append(CheckpointInfo(name=d.name, path=str(d), kind="unknown", is_latest=d.name == latest,
                                          created_at=d.stat().st_mtime, damaged=f"{err.file} {err.detail}"))
                continue
            except ValueError:
                continue  # a foreign directory: not a checkpoint of ours
            info = _info(d, meta, latest)
            problem = checkpoint_problem(d, meta)
            if problem:
                info.damaged = " ".join(problem)
            out.append(info)
    return sorted(out, key=lambda i: (i.created_at, i.name))


def prune_checkpoints(root: str | Path, keep: int, protect: tuple[str, ...] = ()) -> list[str]:
    """Delete all but the newest ``keep`` periodic checkpoints (never 'latest' or ``protect``)."""
    # Damaged checkpoints are neither kept (they would take a good one's place) nor deleted (evidence).
    infos = [i for i in list_checkpoints(root)
             if i.kind == "periodic" and not i.is_latest and i.name not in protect and not i.damaged]
    doomed = infos[: max(0, len(infos) - max(0, keep - 1))]
    for info in doomed:
        shutil.rmtree(info.path, ignore_errors=True)
    return [i.name for i in doomed]
