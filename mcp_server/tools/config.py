"""Config tools: get_config, patch_config, prepare_data."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from ..config_ops import PatchError, apply_patch, choices
from ..engine import EngineError
from ..inert import inert_fields, without
from ..views import MAX_CHANGES, ChangedField, ConfigView, DataPrepResult, DerivedFacts, PatchResult, derived_view
from ..workspace import WorkspaceError
from .common import guarded, read_only, writes
from .compact import reply


def register(server: MCPServer, app) -> None:
    def derived_or_note(cfg) -> DerivedFacts | None:
        try:
            return app.engine.derived(cfg)
        except Exception as err:  # derived facts are a bonus: never fail the config tools on them
            return DerivedFacts(seq_len=cfg.model.max_seq_len, notes=[f"derived facts unavailable: {err}"])

    @server.tool(annotations=read_only("Get the run config"))
    @guarded
    def get_config(
        derived: Annotated[bool, Field(description="Add derived facts (the first call loads the data; each new "
                                       "model/batch shape is timed once, ~1-2 s).")] = True,
        detail: Annotated[bool, Field(description="Every config field (inert ones too) and the full derived facts."
                                      )] = False,
    ) -> Annotated[CallToolResult, ConfigView]:
        """The run config (model, train, data; inert fields left out), enum choices and derived facts (params, plan,
        memory_mb, s_per_update, eta_s; notes warn of slow or impossible settings). Call it first: patch_config
        takes the same shape."""
        cfg = app.config()
        facts = app.engine.with_speed(cfg, derived_or_note(cfg)) if derived else None
        inert = set() if detail else inert_fields(cfg)
        return reply(ConfigView(config=without(cfg.model_dump(mode="json"), inert),
                                derived=derived_view(facts, detail), choices=without(choices(), inert)))

    @server.tool(annotations=writes("Patch the run config", destructive=True, idempotent=True))
    @guarded
    def patch_config(
        patch: Annotated[dict[str, Any], Field(
            description="JSON merge patch, e.g. {\"model\":{\"layers\":2}}; null resets a field. Dotted keys, bare "
            "names, other trainers' names (learning_rate, n_layer...) and get_config's result, edited, are accepted."
        )],
        dry_run: Annotated[bool, Field(description="Validate and report; save nothing.")] = False,
        include_config: Annotated[bool, Field(description="Also return the whole new config.")] = False,
    ) -> Annotated[CallToolResult, PatchResult]:
        """Change the run config: returns each changed field (old -> new), notes on how the patch was read and the
        new derived facts. An invalid patch changes nothing; the error names each bad field and the fix. A running
        job keeps its own config."""
        with app.config_lock:
            notes: list[str] = []
            current = app.config()
            new, changes = apply_patch(current, patch, notes)
            try:
                app.ws.confine_data(new.data)
                if new.train.teacher != current.train.teacher:  # it must name a checkpoint of this workspace
                    app.engine.teacher(new)
            except (WorkspaceError, EngineError) as err:
                raise PatchError(f"invalid patch, nothing was changed: {err}") from err
            if not dry_run and changes:
                app.save_config(new)
        return reply(PatchResult(
            applied=not dry_run, changed=[ChangedField(path=p, old=o, new=n) for p, o, n in changes[:MAX_CHANGES]],
            changed_count=len(changes), notes=notes or None, derived=derived_view(derived_or_note(new)),
            config=new.model_dump(mode="json") if include_config else None,
        ))

    @server.tool(annotations=writes("Load and cache the data", destructive=False, idempotent=True,
                                       open_world=True))
    @guarded
    def prepare_data(
        reload: Annotated[bool, Field(description="Re-read the source and re-check the cache.")] = True,
    ) -> Annotated[CallToolResult, DataPrepResult]:
        """Load the configured text into the workspace's bit cache; report bytes, windows, cache_hit. Use before a
        long run to check the data (data.source 'hf' downloads here)."""
        cfg = app.config()
        corpus = app.engine.corpus(cfg.data, force=reload)
        view = app.engine.data_view(corpus)
        seq = cfg.model.max_seq_len
        return reply(DataPrepResult(
            **view.model_dump(), train_windows=app.engine.windows(corpus.train, seq),
            val_windows=app.engine.windows(corpus.val, seq), cache_path=app.ws.rel(corpus.cache_path),
        ))
