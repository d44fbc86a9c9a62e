"""The workspace: every file the server reads or writes lives under one directory.

Layout (created on first use)::

    <root>/config.json              the current RunConfig (what patch_config edits)
    <root>/state.json               which checkpoint is current / starts the next run, last telemetry
    <root>/jobs/<job_id>/job.json   a job's record (status, pid, latest plan/step/eval, result; no config)
    <root>/jobs/<job_id>/request.json   what the worker process is asked to do (its TrainRequest, config included)
    <root>/jobs/<job_id>/metrics.jsonl  every event the worker emitted, one typed JSON object per line
    <root>/jobs/<job_id>/worker.log     the worker's stdout/stderr (tracebacks go here)
    <root>/runs/<run>/              a Trainer output directory: one per fresh training run; a resumed job
                                    continues in the directory of the run it resumes
    <root>/runs/<run>/checkpoints/<name>/  checkpoints (model.safetensors, optimizer.safetensors, meta.json);
                                    agents name them "<run>/<name>", e.g. "job-0001/update-0000100"
    <root>/runs/scale-ups/checkpoints/<name>/  models written by scale_up
    <root>/exports/<name>/          INT8 exports
    <root>/cache/                   memory-mapped bit caches of the training text

Every path an agent passes is a *name* resolved inside one of these folders; anything that would
leave the workspace (``..``, absolute paths, symlinks pointing out) is refused. Writes go to a
temporary file in the same folder and are renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .wslock import WorkspaceLock

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

CONFIG_LOST = ("the DEFAULT config is now in force (get_config shows it; patch_config to restore your settings, "
               "the kept file shows what they were)")
STATE_LOST = ("the record of the current checkpoint and of the one the next run starts from was lost: "
              "evaluate/generate use the newest checkpoint (list_checkpoints; load_checkpoint(name) to choose)")
NOTICE_TOOLS = ("get_config", "train")  # a notice is shown in these at least once...
NOTICE_MIN_SHOWN = 3  # ...and in at least this many results,
NOTICE_MAX_SHOWN = 12  # or in this many results, whichever tools they came from


class WorkspaceError(ValueError):
    """A path or name that is not allowed; the message says why and what is allowed."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file, None when absent: every write is a rename, so a new stamp says some process (this
    one or another server on the workspace) rewrote it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class ServerState(BaseModel):
    """Small persistent facts the server keeps between restarts (state.json)."""

    current_checkpoint: str | None = Field(
        None, description="Checkpoint that evaluate/generate/export_int8/inspect_attention use."
    )
    init_checkpoint: str | None = Field(
        None, description="Checkpoint the next train(resume=false) starts from (set by scale_up/load_checkpoint)."
    )
    last_generation: dict[str, Any] | None = Field(None, description="Telemetry and verdict of the last generate.")


class Workspace:
    """A directory holding all server state; every name argument is resolved inside it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        # Held around every read-modify-write of shared files (config, state, notices, job allocation): other
        # servers and workers on this workspace are other processes (wslock.py).
        self.lock = WorkspaceLock(self.root)
        self._notices: list[dict[str, Any]] | None = None  # the copy to show when notices.json cannot be written
        self._notices_unsaved = False
        for sub in (self.root, self.jobs_dir, self.runs_dir, self.exports_dir, self.cache_dir):
            sub.mkdir(parents=True, exist_ok=True)
            if sub is not self.root and not self.confined(sub, self.root):
                # Everything under it would be read and written through the link, outside the workspace.
                raise WorkspaceError(f"workspace folder {sub.name!r} is a symlink ({sub} -> {sub.resolve()}); "
                                     f"replace it with a real folder inside {self.root}")

    # ---- folders -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run: str) -> Path:
        return self.named(run, base=self.runs_dir, what="run")

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    # ---- confinement ---------------------------------------------------------------------------
    def resolve(self, relative: str | Path, *, base: Path | None = None) -> Path:
        """Resolve ``relative`` inside ``base`` (default: the workspace root); refuse anything outside."""
        base = (base or self.root).resolve()
        rel = Path(relative)
        if rel.is_absolute():
            raise WorkspaceError(
                f"absolute paths are not allowed ({str(relative)!r}); give a path inside the workspace"
            )
        target = (base / rel).resolve()
        if not target.is_relative_to(self.root) or not target.is_relative_to(base):
            raise WorkspaceError(
                f"path {str(relative)!r} leaves the workspace folder {base.relative_to(self.root.parent)}; "
                "give a plain name without '..'"
            )
        return target

    def confined(self, path: Path, base: Path | None = None) -> bool:
        """True when ``path`` is not a symlink and resolves inside ``base`` (default: the workspace root)."""
        base = (base or self.root).resolve()
        try:
            return not path.is_symlink() and path.resolve().is_relative_to(base)
        except (OSError, RuntimeError):  # a symlink loop, or no permission to look
            return False

    def entries(self, base: Path, *, what: str, files: tuple[str, ...] = ()) -> list[Path]:
        """The children of ``base`` (sorted) that are real and inside it; symlinks and anything resolving
        outside are skipped with a warning. Every directory walk of the server (job recovery, checkpoint
        listings, caches) goes through here, so a link planted in the workspace is never read, listed or
        written through. ``files``: names inside each child that must not be links either (e.g. job.json)."""
        try:
            children = sorted(base.iterdir()) if base.is_dir() and self.confined(base) else []
        except OSError as err:
            log.warning("cannot list %s: %s", self.rel(base), err)
            return []
        out = []
        for child in children:
            bad = next((c for c in (child, *(child / f for f in files)) if (c.exists() or c.is_symlink())
                        and not self.confined(c, base)), None)
            if bad is not None:
                log.warning("skipping %s %s: %s is a symlink or leaves the workspace (-> %s)",
                            what, child.name, self.rel(bad) if bad != child else bad.name, os.path.realpath(bad))
                continue
            out.append(child)
        return out

    @staticmethod
    def tree_bytes(path: Path) -> int:
        """Bytes of the files under ``path`` without following symlinks (a link's target is never read)."""
        if path.is_symlink():
            return 0
        if path.is_file():
            return path.stat().st_size
        total = 0
        for root, _dirs, files in os.walk(path):  # followlinks=False: linked folders are not entered
            for name in files:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(root, name))
                    if stat.S_ISREG(st.st_mode):  # a link to a file is not counted either
                        total += st.st_size
        return total

    def drop_links(self, base: Path, *, what: str) -> None:
        """Remove symlinks directly inside ``base`` (a cache: its entries are rebuilt on demand), so nothing
        is read or written through them. Only the link itself is removed, never its target."""
        try:
            links = [c for c in base.iterdir() if c.is_symlink()] if base.is_dir() else []
        except OSError:
            return
        for link in links:
            log.warning("removing %s link %s (-> %s): entries must live inside the workspace",
                        what, link.name, os.path.realpath(link))
            link.unlink(missing_ok=True)

    def named(self, name: str, *, base: Path, what: str) -> Path:
        """A single path component (checkpoint, export or job name) inside ``base``."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise WorkspaceError(
                f"{what} name {name!r} is not allowed: use 1-80 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (no '/' or '..')"
            )
        return self.resolve(name, base=base)

    def checkpoint_path(self, name: str) -> Path:
        """``"<run>/<checkpoint>"`` -> runs/<run>/checkpoints/<checkpoint> (both parts validated)."""
        run, sep, ck = name.partition("/") if isinstance(name, str) else ("", "", "")
        if not sep:
            raise WorkspaceError(
                f"checkpoint name {name!r} needs the form '<run>/<checkpoint>', e.g. 'job-0001/update-0000100'; "
                "list_checkpoints() shows the names"
            )
        return self.named(ck, base=self.run_dir(run) / "checkpoints", what="checkpoint")

    def export_path(self, name: str) -> Path:
        return self.named(name, base=self.exports_dir, what="export")

    def job_dir(self, job_id: str) -> Path:
        return self.named(job_id, base=self.jobs_dir, what="job")

    # ---- config ----------------------------------------------------------------------------------
    def load_config_dict(self) -> dict[str, Any]:
        """The stored config as a dict ({} when absent); a corrupt file is set aside, not fatal."""
        if not self.config_path.exists():
            return {}
        try:
            data = read_json(self.config_path)
            if not isinstance(data, dict):
                raise ValueError("config.json must hold a JSON object")
            return data
        except (OSError, ValueError) as err:
            self._set_aside(self.config_path, f"not valid JSON: {err}", CONFIG_LOST)
            return {}

    def load_config(self):
        """The current RunConfig (defaults when none is stored or the stored one is invalid)."""
        from bit_transformer.config import RunConfig, stored_run_config

        data = self.load_config_dict()
        try:
            cfg = stored_run_config(data)
        except ValidationError as err:
            first = err.errors()[0] if err.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ())) or "?"
            self._set_aside(self.config_path, f"{err.error_count()} invalid field(s), first {where}: "
                            f"{first.get('msg', err)}", CONFIG_LOST)
            cfg = RunConfig()
        if not self.config_path.exists():
            self.save_config(cfg)
        return cfg

    def save_config(self, cfg) -> None:
        atomic_write_json(self.config_path, cfg.model_dump(mode="json"))

    # ---- state -----------------------------------------------------------------------------------
    def load_state(self) -> ServerState:
        if not self.state_path.exists():
            return ServerState()
        try:
            return ServerState.model_validate(read_json(self.state_path))
        except (OSError, ValueError) as err:
            # Set aside (the next save would overwrite the evidence) and tell the agent.
            self._set_aside(self.state_path, f"unreadable: {err}", STATE_LOST)
            return ServerState()

    # ---- notices: what an agent must be told once a damaged file was replaced ---------------------------
    @property
    def notices_path(self) -> Path:
        return self.root / "notices.json"

    def _set_aside(self, path: Path, why: str, consequence: str) -> None:
        """Keep a damaged file as ``<name>.bad-<ts>`` and record a pending notice (persisted, so a restarted
        server still tells)."""
        bad = path.with_name(f"{path.name}.bad-{int(time.time())}")
        try:
            os.replace(path, bad)
            kept = f"kept as {bad.name}"
        except FileNotFoundError:
            return  # another thread set it aside a moment ago (and recorded the notice)
        except OSError as err:
            kept = f"could not be set aside ({err.strerror or err})"
        why = " ".join(why.split())[:160]
        log.warning("%s damaged (%s); %s; %s", path.name, why, kept, consequence)
        self.add_notice(path.name, f"{path.name} was damaged ({why}) and was {kept}; {consequence}")

    def _read_notices(self) -> list[dict[str, Any]]:
        try:
            data = read_json(self.notices_path)
            return [n for n in data if isinstance(n, dict) and "text" in n] if isinstance(data, list) else []
        except (OSError, ValueError):
            return []

    def _write_notices(self, notices: list[dict[str, Any]]) -> None:
        self._notices, self._notices_unsaved = notices, True
        with contextlib.suppress(OSError):  # a full disk must not turn a recovery into a crash
            if notices:
                atomic_write_json(self.notices_path, notices)
            else:
                self.notices_path.unlink(missing_ok=True)
            self._notices_unsaved = False

    def _current_notices(self) -> list[dict[str, Any]]:
        """notices.json (shared with other servers on this workspace), or this process's copy when it could
        not be written (disk full)."""
        if self._notices_unsaved and self._notices is not None:
            return self._notices
        return self._read_notices()

    def add_notice(self, file: str, text: str) -> None:
        with self.lock:
            notices = [n for n in self._current_notices() if n.get("file") != file]  # newest per file wins
            notices.append({"file": file, "text": text, "shown": 0, "shown_in": []})
            self._write_notices(notices)

    def pending_notices(self) -> list[str]:
        """Texts of the notices not yet shown enough (read each call: another server may have added one)."""
        if not self._notices_unsaved and not self.notices_path.exists():
            return []  # the common case, without taking the lock
        with self.lock:
            return [n["text"] for n in self._current_notices()]

    def notices_shown(self, tool: str) -> None:
        """One more result carried the notices. Each stays until it was in a get_config and a train result
        and in at least NOTICE_MIN_SHOWN results, or in NOTICE_MAX_SHOWN results (whatever the tools were)."""
        with self.lock:
            notices = self._current_notices()
            if not notices:
                return
            keep = []
            for n in notices:
                n["shown"] = int(n.get("shown", 0)) + 1
                n["shown_in"] = sorted({*n.get("shown_in", []), tool} & set(NOTICE_TOOLS))
                done = (n["shown"] >= NOTICE_MIN_SHOWN and set(n["shown_in"]) >= set(NOTICE_TOOLS)) \
                    or n["shown"] >= NOTICE_MAX_SHOWN
                if not done:
                    keep.append(n)
            self._write_notices(keep)

    def save_state(self, state: ServerState) -> None:
        atomic_write_json(self.state_path, state.model_dump(mode="json"))

    def update_state(self, **changes: Any) -> ServerState:
        with self.lock:  # tools, job monitors, other servers and finishing workers all update it
            state = self.load_state().model_copy(update=changes)
            self.save_state(state)
            return state

    # ---- data paths ----------------------------------------------------------------------------------
    def confine_path(self, pattern: str, field: str, *, check_files: bool = False) -> str:
        """A data path or glob -> absolute, inside the workspace (relative ones are relative to the root)."""
        if not isinstance(pattern, str) or not pattern or "\0" in pattern:
            raise WorkspaceError(f"{field}: give a non-empty path")
        if ".." in Path(pattern).parts:
            raise WorkspaceError(f"{field}: {pattern!r} contains '..'; give a path inside the workspace {self.root}")
        p = Path(os.path.expanduser(pattern))
        p = Path(os.path.normpath(p if p.is_absolute() else self.root / p))
        if not p.is_relative_to(self.root):
            raise WorkspaceError(
                f"{field}: {pattern!r} is outside the workspace {self.root}; copy the files into it (e.g. "
                f"{self.root / 'data'}/) and give a path relative to the workspace, such as 'data/*.txt'"
            )
        if check_files:
            matches = glob.glob(str(p), recursive=True) if glob.has_magic(str(p)) else [str(p)]
            for m in matches:
                if os.path.exists(m) and not Path(m).resolve().is_relative_to(self.root):
                    raise WorkspaceError(f"{field}: {m!r} is a link that leaves the workspace")
        return str(p)

    def confine_data(self, data_cfg, *, check_files: bool = False):
        """A DataConfig copy whose file paths (paths, local hf_data_files / hf_name) are absolute and inside."""
        upd: dict[str, Any] = {}
        if data_cfg.paths:
            upd["paths"] = [self.confine_path(p, f"data.paths[{i}]", check_files=check_files)
                            for i, p in enumerate(data_cfg.paths)]
        files = data_cfg.hf_data_files
        if files is not None:
            def fix(v, where):
                if isinstance(v, str):
                    return v if "://" in v else self.confine_path(v, where, check_files=check_files)
                return [fix(x, f"{where}[{i}]") for i, x in enumerate(v)]
            if isinstance(files, dict):
                upd["hf_data_files"] = {k: fix(v, f"data.hf_data_files.{k}") for k, v in files.items()}
            else:
                upd["hf_data_files"] = fix(files, "data.hf_data_files")
        name = data_cfg.hf_name
        if name.startswith(("/", ".", "~")):  # a local dataset directory, not a Hub id
            upd["hf_name"] = self.confine_path(name, "data.hf_name", check_files=check_files)
        return data_cfg.model_copy(update=upd) if upd else data_cfg

    def confine_config(self, cfg, *, check_files: bool = False):
        return cfg.model_copy(update={"data": self.confine_data(cfg.data, check_files=check_files)})

    def rel(self, path: Path) -> str:
        """``path`` relative to the workspace root, for messages and results."""
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)
