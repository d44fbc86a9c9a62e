"""Damaged checkpoints (issue 13, item 2): real truncated and corrupted files on disk.

Loading must raise ``CheckpointDamaged`` naming the checkpoint and the file and saying what to do;
``list_checkpoints`` must mark the damaged one (cheap header/size check) and pruning must leave it alone.
"""

from __future__ import annotations

import json

import pytest
import torch

import bit_transformer.checkpoint as ck
from bit_transformer.config import RunConfig
from bit_transformer.factory import build_model


def _save(root, name: str, kind: str = "periodic"):
    cfg = RunConfig.model_validate({"model": {"layers": 1, "d_model": 16, "nhead": 2, "max_seq_len": 36}})
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 2, (2, 36))).logits.float().mean().backward()
    opt.step()
    return ck.save_checkpoint(root / name, model=model, config=cfg, optimizer=opt, state={"update": 1},
                              kind=kind, tensors={"rng": torch.get_rng_state()})


def _cut(path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize(("file", "damage"), [
    ("model.safetensors", lambda p: _cut(p)),                     # cut in half: data missing
    ("model.safetensors", lambda p: _cut(p, 0.001)),             # cut inside the header
    ("model.safetensors", lambda p: p.write_bytes(p.read_bytes() + b"junk")),
    ("optimizer.safetensors", lambda p: _cut(p)),
    ("extra.safetensors", lambda p: p.write_bytes(b"")),
    ("model.safetensors", lambda p: p.unlink()),
])
def test_a_damaged_tensor_file_names_checkpoint_and_file(tmp_path, file, damage):
    root = tmp_path / "run-7" / "checkpoints"
    path = _save(root, "update-0000001")
    damage(path / file)
    with pytest.raises(ck.CheckpointDamaged) as err:
        ck.load_checkpoint(path)
    msg = str(err.value)
    assert "'run-7/update-0000001' is damaged" in msg and file in msg
    assert "list_checkpoints()" in msg and "train again" in msg
    assert str(tmp_path) not in msg  # a workspace name, not a host path
    (info,) = ck.list_checkpoints(root)
    assert info.name == "update-0000001" and info.damaged and info.damaged.startswith(file)


def test_a_corrupt_meta_json_is_marked_and_refused(tmp_path):
    root = tmp_path / "r" / "checkpoints"
    good = _save(root, "update-0000001")
    bad = _save(root, "update-0000002")
    _cut(bad / "meta.json")
    with pytest.raises(ck.CheckpointDamaged, match=r"'r/update-0000002' is damaged: meta.json is not readable JSON"):
        ck.load_checkpoint(bad)
    infos = {i.name: i for i in ck.list_checkpoints(root)}
    assert infos["update-0000001"].damaged is None and infos["update-0000002"].damaged.startswith("meta.json")
    assert ck.load_checkpoint(good).state["update"] == 1  # the intact one still loads


def test_the_cheap_check_agrees_with_safetensors_on_intact_files(tmp_path):
    path = _save(tmp_path / "checkpoints", "a")
    for f in ("model.safetensors", "optimizer.safetensors", "extra.safetensors"):
        assert ck.safetensors_problem(path / f) is None
    assert json.loads((path / "meta.json").read_text())["files"] == [
        "model.safetensors", "optimizer.safetensors", "extra.safetensors"]


def test_pruning_neither_keeps_nor_deletes_a_damaged_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    paths = [_save(root, f"update-{i:07d}") for i in range(1, 5)]
    _cut(paths[2] / "model.safetensors")  # update-3 is damaged (update-4 is 'latest')
    doomed = ck.prune_checkpoints(root, keep=2)
    assert doomed == ["update-0000001"]  # kept: update-2 (newest intact periodic) and latest update-4
    assert paths[2].is_dir() and paths[1].is_dir()
