"""Config fields with no effect under the current settings: get_config leaves them out unless detail=true.

Each rule pairs a condition on the config with the fields it makes inert. The fields still exist: patch_config
takes every one of them (setting one first is how an agent prepares a switch, e.g. hf_name before
data.source='hf'), and get_config(detail=true) and bt://config show the whole config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bit_transformer.config import RunConfig

HF_FIELDS = ("data.hf_name", "data.hf_config", "data.hf_split", "data.text_field", "data.hf_data_files")
PLATEAU_FIELDS = ("train.patience", "train.min_delta", "train.plateau_scale_up", "train.plateau_grow_layers")

RULES: tuple[tuple[Callable[[RunConfig], bool], tuple[str, ...]], ...] = (
    (lambda c: c.data.source != "hf", HF_FIELDS),
    (lambda c: c.data.source != "files", ("data.paths",)),
    (lambda c: not c.model.act, ("model.act_threshold", "model.ponder_weight")),
    (lambda c: c.model.chunk_size is None, ("model.overlap",)),  # must be 0 without chunks
    (lambda c: c.train.lr_schedule != "progressive_plateau", PLATEAU_FIELDS),
    (lambda c: not c.train.plateau_scale_up, ("train.plateau_grow_layers",)),
    (lambda c: c.train.lr_schedule != "wsd", ("train.decay_frac",)),
    (lambda c: c.train.objective != "denoise", ("train.diffusion_schedule",)),
    (lambda c: c.train.teacher is None, ("train.distill_weight", "train.distill_temperature")),
)


def inert_fields(cfg: RunConfig) -> set[str]:
    """Dotted paths ('section.field') of the fields ``cfg``'s own settings make ineffective."""
    return {path for applies, paths in RULES if applies(cfg) for path in paths}


def without(data: dict[str, Any], paths: set[str]) -> dict[str, Any]:
    """``data`` (nested by section, like the config or its choices) without the fields at ``paths``."""
    out = {section: dict(fields) if isinstance(fields, dict) else fields for section, fields in data.items()}
    for path in paths:
        section, name = path.split(".", 1)
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out
