"""Checkpoints: safetensors + JSON round trip, atomic writes, latest pointer, listing, no pickle."""

from __future__ import annotations

import inspect
import json

import pytest
import safetensors.torch
import torch

import bit_transformer.checkpoint as ck
from bit_transformer.config import RunConfig
from bit_transformer.factory import build_model
from bit_transformer.schedule import ProgressivePlateau


def cfg() -> RunConfig:
    model = {"layers": 1, "d_model": 16, "nhead": 2, "max_seq_len": 36, "dropout": 0.0}
    return RunConfig.model_validate({"model": model})


def trained(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg().model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 2, (2, 36))
    for _ in range(2):
        model(x).logits.float().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_restores_everything(tmp_path):
    model, opt = trained()
    sched = ProgressivePlateau(1e-3, 100, 0.1, patience=2)
    sched.observe(3, 0.7)
    sched.observe(5, 0.71)
    rng = torch.get_rng_state()
    state = {"update": 7, "epoch": 1, "position": 3, "gate": {"ema": {"loss": 0.5}}, "np": [1, 2**70]}
    path = ck.save_checkpoint(tmp_path / "update-7", model=model, config=cfg(), optimizer=opt, scheduler=sched,
                              state=state, tensors={"rng.torch_cpu": rng}, kind="periodic")
    assert sorted(p.name for p in path.iterdir()) == ["extra.safetensors", "meta.json", "model.safetensors",
                                                      "optimizer.safetensors"]
    loaded = ck.load_checkpoint(tmp_path)  # the root: follows `latest`
    assert loaded.path == str(path) and loaded.state == state and loaded.config == cfg()
    for (k, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert torch.equal(loaded.tensors["rng.torch_cpu"], rng)
    fresh = ProgressivePlateau(1e-3, 100, 0.1, patience=2)
    fresh.load_state_dict(loaded.scheduler_state)
    assert fresh.state_dict() == sched.state_dict()
    # optimizer: the restored one takes exactly the same next step
    opt2 = torch.optim.AdamW(loaded.model.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.optimizer_state)
    x = torch.randint(0, 2, (2, 36))
    for m, o in ((model, opt), (loaded.model, opt2)):
        m(x).logits.float().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), loaded.model.parameters(), strict=True):
        assert torch.equal(a, b)
    m2, c2 = ck.load_model(path)
    assert not m2.training and c2 == cfg()


def test_no_pickle_on_any_path(tmp_path, monkeypatch):
    src = inspect.getsource(ck)
    assert "torch.load" not in src.replace("``torch.load`` is never called", "") and "import pickle" not in src

    def forbidden(*a, **k):
        raise AssertionError("pickle-based load used")

    monkeypatch.setattr(torch, "load", forbidden)
    model, opt = trained()
    ck.save_checkpoint(tmp_path / "a", model=model, config=cfg(), optimizer=opt, state={})
    ck.load_checkpoint(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["format"] == ck.FORMAT and meta["config"]["model"]["d_model"] == 16


def test_failed_save_leaves_the_old_checkpoint_and_no_debris(tmp_path, monkeypatch):
    model, opt = trained()
    first = ck.save_checkpoint(tmp_path / "update-1", model=model, config=cfg(), optimizer=opt, state={"update": 1})
    before = (first / "model.safetensors").read_bytes()
    real = safetensors.torch.save_file
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # model written, optimizer fails
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(ck, "save_file", flaky)
    other, _ = trained(seed=1)
    for name in ("update-1", "update-2"):  # overwrite an existing one, or write a new one
        calls["n"] = 0
        with pytest.raises(OSError, match="disk full"):
            ck.save_checkpoint(tmp_path / name, model=other, config=cfg(), optimizer=opt, state={"update": 2})
    assert (first / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "update-1"]  # no temp dirs left
    assert (tmp_path / "latest").read_text().strip() == "update-1"
    monkeypatch.setattr(ck, "save_file", real)
    ck.save_checkpoint(tmp_path / "update-1", model=other, config=cfg(), state={"update": 1})  # atomic overwrite
    assert (first / "model.safetensors").read_bytes() != before
    assert not (first / "optimizer.safetensors").exists()


def test_list_resolve_and_prune(tmp_path):
    model, _ = trained()
    root = tmp_path / "run" / "checkpoints"
    for u in (1, 2, 3, 4):
        ck.save_checkpoint(root / f"update-{u:07d}", model=model, config=cfg(), state={"update": u}, kind="periodic")
    ck.save_checkpoint(root / "best", model=model, config=cfg(), state={"update": 2, "val_bpb": 3.5}, kind="best",
                       update_latest=False)
    (root / ".tmp-update-9-deadbeef").mkdir()  # an interrupted save
    (root / "junk").mkdir()
    (root / "junk" / "meta.json").write_text('{"format": "other"}')
    infos = ck.list_checkpoints(tmp_path / "run")  # run dir -> its checkpoints/
    assert [i.name for i in infos] == ["update-0000001", "update-0000002", "update-0000003", "update-0000004", "best"]
    assert [i.name for i in infos if i.is_latest] == ["update-0000004"]
    assert infos[-1].val_bpb == 3.5 and infos[-1].kind == "best" and infos[0].update == 1
    assert ck.resolve_checkpoint(tmp_path / "run").name == "update-0000004"
    removed = ck.prune_checkpoints(root, keep=2)
    assert removed == ["update-0000001", "update-0000002"]
    assert [i.name for i in ck.list_checkpoints(root)] == ["update-0000003", "update-0000004", "best"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.resolve_checkpoint(tmp_path / "nowhere")


def test_mismatched_weights_are_a_clear_error(tmp_path):
    model, _ = trained()
    path = ck.save_checkpoint(tmp_path / "x", model=model, config=cfg(), state={})
    meta = json.loads((path / "meta.json").read_text())
    meta["config"]["model"]["layers"] = 2
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match its config"):
        ck.load_checkpoint(path)
