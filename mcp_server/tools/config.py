"""Config tools: get_config, patch_config, prepare_data."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from ..config_ops import PatchError, apply_patch
from ..views import ChangedField, ConfigView, DataPrepResult, DerivedFacts, PatchResult
from ..workspace import WorkspaceError
from .common import guarded, read_only, writes


def register(server: MCPServer, app) -> None:
    def derived_or_note(cfg) -> DerivedFacts | None:
        try:
            return app.engine.derived(cfg)
        except Exception as err:  # derived facts are a bonus: never fail the config tools on them
            return DerivedFacts(seq_len=cfg.model.max_seq_len, notes=[f"derived facts unavailable: {err}"])

    @server.tool(annotations=read_only("Get the run configuration"))
    @guarded
    def get_config(
        derived: Annotated[bool, Field(description="Also compute parameter count, updates per epoch and memory "
                                       "estimate (cached per config; the first call loads the data).")] = True,
    ) -> ConfigView:
        """The current run configuration (model, train, data sections) and facts derived from it."""
        cfg = app.config()
        return ConfigView(config=cfg, derived=derived_or_note(cfg) if derived else None,
                          path=app.ws.rel(app.ws.config_path))

    @server.tool(annotations=writes("Patch the run configuration", destructive=True, idempotent=True))
    @guarded
    def patch_config(
        patch: Annotated[dict[str, Any], Field(
            description="JSON merge patch (RFC 7386) over the config, e.g. "
            "{\"model\": {\"layers\": 2, \"d_model\": 32}, \"train\": {\"batch_size\": 8}}. null resets a field "
            "to its default. Dotted keys (\"model.d_model\") and "
            "bare field names ({\"layers\": 8, \"amp\": \"bf16\"}, the playbook flag names) are routed to their "
            "section.")],
        dry_run: Annotated[bool, Field(description="Validate and report, but do not save.")] = False,
    ) -> PatchResult:
        """Change the run configuration. Returns the new config, every changed field and derived facts
        (parameter count, optimizer updates per epoch, estimated memory). An invalid patch changes nothing;
        the error names every bad field and why. A running job keeps the config it started with."""
        with app.config_lock:
            notes: list[str] = []
            new, changes = apply_patch(app.config(), patch, notes)
            try:
                app.ws.confine_data(new.data)
            except WorkspaceError as err:
                raise PatchError(f"invalid patch, nothing was changed: {err}") from err
            if not dry_run and changes:
                app.save_config(new)
        return PatchResult(
            config=new, derived=derived_or_note(new), path=app.ws.rel(app.ws.config_path),
            changed=[ChangedField(path=p, old=o, new=n) for p, o, n in changes], applied=not dry_run,
            notes=notes,
        )

    @server.tool(annotations=writes("Load and cache the training text", destructive=False, idempotent=True,
                                       open_world=True))
    @guarded
    def prepare_data(
        reload: Annotated[bool, Field(description="Read the source again and re-check the bit cache (a second "
                                      "load of unchanged text is a cache hit).")] = True,
    ) -> DataPrepResult:
        """Load the configured text, encode it to bits once into the workspace's memory-mapped cache and report
        bytes, windows and whether the cache was hit (playbook task 5)."""
        cfg = app.config()
        corpus = app.engine.corpus(cfg.data, force=reload)
        view = app.engine.data_view(corpus)
        seq = cfg.model.max_seq_len
        return DataPrepResult(
            **view.model_dump(), train_windows=app.engine.windows(corpus.train, seq),
            val_windows=app.engine.windows(corpus.val, seq), cache_path=app.ws.rel(corpus.cache_path),
        )
