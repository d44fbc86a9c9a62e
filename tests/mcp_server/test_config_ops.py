"""JSON merge patch over RunConfig: routing, diffs, and errors that name every bad field."""

from __future__ import annotations

import pytest

from bit_transformer.config import RunConfig
from mcp_server.config_ops import PatchError, apply_patch, diff, merge_patch, normalize_patch


def test_merge_patch_rfc7386():
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": 5}) == {
        "a": 1, "b": {"d": 3, "e": 4}, "f": 5}
    assert merge_patch({"a": 1}, {"a": [1, 2]}) == {"a": [1, 2]}


def test_flat_and_dotted_keys_are_routed():
    patch, problems = normalize_patch({"layers": 8, "model.d_model": 256, "batch_size": 64, "max_bytes": 1000})
    assert problems == []
    assert patch == {"model": {"layers": 8, "d_model": 256}, "train": {"batch_size": 64}, "data": {"max_bytes": 1000}}


def test_apply_reports_changed_leaves():
    new, changes = apply_patch(RunConfig(), {"model": {"layers": 2}, "amp": "bf16", "safety": {"burn_in": 3}})
    assert new.model.layers == 2 and new.train.amp == "bf16" and new.train.safety.burn_in == 3
    assert {p for p, _, _ in changes} == {"model.layers", "train.amp", "train.safety.burn_in"}
    assert ("model.layers", 4, 2) in changes


def test_null_resets_to_default():
    cfg, _ = apply_patch(RunConfig(), {"model": {"chunk_size": 72}})
    cfg, changes = apply_patch(cfg, {"model": {"chunk_size": None}})
    assert cfg.model.chunk_size is None and changes == [("model.chunk_size", 72, None)]


def test_every_bad_field_is_named():
    with pytest.raises(PatchError) as err:
        apply_patch(RunConfig(), {"model": {"d_model": -1, "lyers": 3}, "train": {"batch_size": 0, "amp": "fp8"},
                                  "bogus": 1})
    msg = str(err.value)
    for needle in ("model.d_model", "model.lyers", "did you mean 'layers'", "train.batch_size", "train.amp",
                   "bogus: unknown field", "nothing was changed"):
        assert needle in msg, (needle, msg)


def test_cross_field_error_says_how_to_fix():
    with pytest.raises(PatchError, match=r"divisible by nhead \(4\); e.g. nhead="):
        apply_patch(RunConfig(), {"d_model": 102})


@pytest.mark.parametrize("patch", ["[1, 2]", "not json", 3, ["a"]])
def test_non_object_patch_is_refused(patch):
    with pytest.raises(PatchError, match="patch"):
        apply_patch(RunConfig(), patch)


def test_json_string_patch_is_accepted():
    new, _ = apply_patch(RunConfig(), '{"model": {"layers": 3}}')
    assert new.model.layers == 3


def test_diff_nested():
    assert diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == [("a.c", 2, 3), ("d", None, 4)]


def test_other_trainers_names_are_routed_with_a_note():
    notes: list[str] = []
    new, _ = apply_patch(RunConfig(), {"learning_rate": 1e-3, "max_steps": 7, "n_layer": 2, "n_head": 2,
                                       "n_embd": 32, "block_size": 72, "train": {"gradient_accumulation_steps": 2},
                                       "model.num_layers": 3}, notes)
    assert (new.train.lr, new.train.steps, new.train.accum_steps) == (1e-3, 7, 2)
    assert (new.model.layers, new.model.nhead, new.model.d_model, new.model.max_seq_len) == (3, 2, 32, 72)
    assert "learning_rate -> train.lr" in notes and "max_steps -> train.steps" in notes
    assert "model.num_layers -> model.layers" in notes


def test_get_config_result_shape_and_wrapper_are_accepted():
    result = {"config": RunConfig().model_dump(mode="json"), "derived": {"params": 5}, "path": "config.json"}
    result["config"]["train"]["lr"] = 0.01
    notes: list[str] = []
    _, changes = apply_patch(RunConfig(), result, notes)
    assert changes == [("train.lr", 0.003, 0.01)] and "derived" in notes[0] and "path" in notes[0]
    _, changes = apply_patch(RunConfig(), {"config": {"model": {"layers": 3}}})
    assert changes == [("model.layers", 4, 3)]
    with pytest.raises(PatchError, match="inside"):
        apply_patch(RunConfig(), {"config": {"model": {"layers": 3}}, "train": {"lr": 1.0}})


@pytest.mark.parametrize(("patch", "good", "bad"), [
    ({"max_stepz": 5}, "did you mean 'steps'", "max_bytes"),
    ({"warmup_steps": 10}, "warmup_frac is a fraction", "did you mean"),
    ({"model": {"batch_size": 3}}, "train.batch_size", "did you mean"),
    ({"hf_confg": "x"}, "did you mean 'hf_config'", "model"),
    ({"config_x": {"model": {}}}, "give a section", "hf_config"),  # an object is never a string field
    ({"lr_rate": "fast"}, "unknown field", "did you mean 'lr'"),  # a string is not a float field
])
def test_hints_name_only_fields_of_the_same_meaning_and_kind(patch, good, bad):
    with pytest.raises(PatchError) as err:
        apply_patch(RunConfig(), patch)
    assert good in str(err.value) and bad not in str(err.value), str(err.value)


def test_max_steps_never_suggests_max_bytes():
    from mcp_server.config_ops import suggest

    assert suggest("max_steps", 5, {"max_bytes": int, "steps": int}) == "train.steps"  # the alias, not a look-alike
    assert suggest("max_stepss", 5, {"max_bytes": int}) is None
