"""hub.py, model_card.py, provenance.py and the CLI's push/pull: exact round trips, a card with measured figures,
and the upload/download path against a local stand-in for the Hub (tests/hub_fake.py); no network."""

from __future__ import annotations

import io
import json
import re
import shlex
import socket
import sys
from types import SimpleNamespace

import matplotlib.image
import pytest
import torch
from huggingface_hub import ModelCard

from bit_transformer import hub
from bit_transformer.baselines import compressor_bpb, training_context
from bit_transformer.bits import bits_to_bytes
from bit_transformer.checkpoint import load_checkpoint, save_checkpoint
from bit_transformer.cli import main
from bit_transformer.config import FRAME_BITS, ModelConfig, RunConfig
from bit_transformer.data import load_corpus
from bit_transformer.evaluate import evaluate_bits
from bit_transformer.factory import build_model
from tests.flat import flat_cfg
from tests.hub_fake import FakeHub

TOKEN = "hf_TestToken0123456789abcdef"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--layers", "2", "--d_model", "32", "--nhead", "4", "--max_seq_len", "72", "--batch_size", "4",
        "--eval_every", "2", "--eval_batches", "2", "--steps", "4", "--ema_decay", "0.9", "--data.max_bytes", "6000"]


@pytest.fixture(autouse=True)
def hf_env(tmp_path, monkeypatch):
    """No real token file, cache or endpoint: huggingface_hub reads these paths at import, so patch them too."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def run_cli(argv: list[str]) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    n = torch.get_num_threads()
    try:
        rc = main(["--threads", "1", *argv])
    finally:
        sys.stdout, sys.stderr = old
        torch.set_num_threads(n)
    return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny CLI run with EMA weights: (run dir, the train argv)."""
    tmp = tmp_path_factory.mktemp("hubrun")
    argv = ["train", *TINY, "--out", str(tmp / "run"), "--quiet"]
    res = run_cli(argv)
    assert res.rc == 0, res.err
    return SimpleNamespace(run=tmp / "run", argv=argv, cache=tmp / "run" / "cache")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def logits(model, cfg: ModelConfig) -> torch.Tensor:
    torch.manual_seed(3)
    x = torch.randint(0, 2, (2, cfg.max_seq_len))
    with torch.no_grad():
        out = model.eval()(x)
    return getattr(out, "logits", out)


# ------------------------------------------------------------------------------------------ the folder


@pytest.mark.parametrize("model_cfg", [
    ModelConfig(layers=2, d_model=32, nhead=4, max_seq_len=72),  # the default: framed, modern block
    flat_cfg(layers=2, d_model=32, nhead=4, max_seq_len=64),  # flat, classic block
], ids=["framed-modern", "flat-classic"])
def test_round_trip_is_bit_identical_and_publishes_the_ema_weights(tmp_path, model_cfg):
    torch.manual_seed(0)
    cfg = RunConfig(model=model_cfg)
    model = build_model(model_cfg)
    averaged = build_model(model_cfg)  # stands in for the EMA: different weights of the same shapes
    ema = {f"ema.{k}": v for k, v in averaged.state_dict().items()}
    ck = save_checkpoint(tmp_path / "run" / "checkpoints" / "update-3", model=model, config=cfg,
                         state={"update": 3, "val_bpb": 7.5, "rng": {"python": [1, 2]}}, tensors=ema)

    info = hub.save_pretrained(ck, tmp_path / "out", eval_bytes=0)
    assert info.ema and info.measured is None
    assert set(info.files) == {"model.safetensors", "meta.json", "config.json", "README.md"}  # no logs: no curve
    back, back_cfg = hub.from_pretrained(tmp_path / "out")
    assert back_cfg == cfg and RunConfig.model_validate_json((tmp_path / "out" / "config.json").read_text()) == cfg
    same_weights(back, averaged)  # the EMA average, not the training weights
    assert torch.equal(logits(back, model_cfg), logits(averaged, model_cfg))
    loaded = load_checkpoint(tmp_path / "out")
    assert loaded.info.kind == "pretrained" and loaded.state == {"update": 3, "val_bpb": 7.5}  # no RNG state
    assert loaded.optimizer_state is None and loaded.tensors == {}

    # A pretrained folder is a checkpoint: written again, it is the same model.
    hub.save_pretrained(tmp_path / "out", tmp_path / "again", eval_bytes=0)
    same_weights(hub.from_pretrained(tmp_path / "again")[0], averaged)
    with pytest.raises(ValueError, match="would overwrite"):
        hub.save_pretrained(tmp_path / "out", tmp_path / "out")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a model folder"):  # never empties a folder of other files
        hub.save_pretrained(tmp_path / "out", tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"


def test_card_shows_measured_bits_per_byte_the_loss_curve_and_the_command(trained, tmp_path):
    res = run_cli(["push", str(trained.run), "me/tiny", "--local", str(tmp_path / "card"), "--eval_bytes", "300",
                   "--json"])
    assert res.rc == 0, res.err
    folder = tmp_path / "card"
    text = (folder / "README.md").read_text(encoding="utf-8")

    # The figure is what evaluate measures on the folder as written, on the same bytes, with the same baselines.
    model, cfg = hub.from_pretrained(folder)
    corpus = load_corpus(cfg.data, trained.cache)
    report = evaluate_bits(model, corpus.val, max_bytes=300, telemetry=False, compressors=False)
    row = re.search(r"\| this model \(next-bit code length\) \| ([0-9.]+) \|", text)
    assert row and float(row[1]) == pytest.approx(report.bits_per_byte, abs=1e-4)
    assert 1.0 < report.bits_per_byte < 12.0
    held_out = bits_to_bytes(corpus.val[: 300 * FRAME_BITS], strict=False)[0]
    expected = compressor_bpb(held_out, training_context(corpus.train))
    for name, flag in (("gzip", "gzip -9"), ("bzip2", "bzip2 -9"), ("xz", "xz -9e")):
        cell = re.search(rf"\| {re.escape(flag)} \| ([0-9.]+) \|", text)
        assert cell and float(cell[1]) == pytest.approx(expected[name], abs=1e-4), name

    # The loss curve: a relative link to a valid PNG beside the card.
    assert "](loss_curve.png)" in text
    png = (folder / "loss_curve.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert matplotlib.image.imread(folder / "loss_curve.png").shape[:2] == (360, 640)

    # How it was made: the exact training command line, and the architecture and data.
    assert shlex.join(["bit-transformer", "--threads", "1", *trained.argv]) in text
    assert "| layers | 2 |" in text and "| width (d_model) | 32 |" in text
    assert f"| parameters | {model.num_parameters():,} |" in text
    assert f"{corpus.n_bytes:,} bytes" in text and "EMA average" in text

    # Hub metadata, as huggingface_hub reads it back.
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "bit-transformer" and "bits_per_byte" in card.data.metrics
    assert {"bit-level", "arch-framed", "block-modern"} <= set(card.data.tags)
    assert card.data.eval_results[0].metric_value == pytest.approx(report.bits_per_byte, abs=1e-4)


def test_resumed_run_lists_every_command_in_order(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    res = run_cli(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"])
    assert res.rc == 0, res.err
    hub.save_pretrained(run, tmp_path / "out", eval_bytes=0)
    text = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "Trained in 2 sessions" in text
    first, second = text.index(" train --layers 2"), text.index(" --resume --steps 6")
    assert first < second


def test_a_start_that_fails_before_training_leaves_no_record(trained, tmp_path):
    """Provenance is written when training starts, so a typo'd data path is not listed as a session."""
    import shutil

    from bit_transformer import provenance

    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    before = provenance.read(run).invocations
    res = run_cli(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet", "--data",
                   str(tmp_path / "no-such-file.txt")])
    assert res.rc != 0 and "no-such-file" in res.err
    assert provenance.read(run).invocations == before
    assert len(before) == 1 and before[0].command.endswith(shlex.join(trained.argv))


def test_card_without_data_says_why_there_is_no_figure(trained, tmp_path):
    def no_data(_):
        raise OSError("corpus gone")

    info = hub.save_pretrained(trained.run, tmp_path / "out", load_data=no_data)
    assert info.measured is None and "corpus gone" in info.not_measured
    assert "Not measured: the training corpus did not load (OSError: corpus gone)" in (
        tmp_path / "out" / "README.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ the Hub


def test_push_and_pull_through_a_local_hub(trained, tmp_path, monkeypatch):
    with FakeHub(TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        pushed = run_cli(["push", str(trained.run), "me/tiny", "--eval_bytes", "200", "--private"])
        assert pushed.rc == 0, pushed.err
        assert fake.private["me/tiny"] is True
        assert set(fake.repos["me/tiny"]) == set(hub.HUB_FILES)
        assert fake.repos["me/tiny"]["loss_curve.png"].startswith(PNG_MAGIC)
        writes = [h for _, path, h, _ in fake.requests if path.startswith("/api/repos/create") or "/commit/" in path]
        assert len(writes) == 2 and all(h["authorization"] == f"Bearer {TOKEN}" for h in writes)  # from HF_TOKEN

        pulled = run_cli(["pull", "me/tiny", "--out", str(tmp_path / "pulled"), "--json"])
        assert pulled.rc == 0, pulled.err
        assert json.loads(pulled.out)["commit"] == fake.commits["me/tiny"]
        cached, _ = hub.from_pretrained("me/tiny")  # straight from the repo id, through the Hub's cache

        # Another library's repo is refused from its file list, before any of its files is downloaded.
        fake.repos["other/gpt"], fake.commits["other/gpt"], fake.private["other/gpt"] = (
            {"model.safetensors": b"\0" * 64, "config.json": b"{}"}, "a" * 40, False)
        foreign = run_cli(["pull", "other/gpt", "--out", str(tmp_path / "foreign")])
        assert foreign.rc == 1 and "not a BitTransformerLM model" in foreign.err, foreign.err
        assert not any("/other/gpt/resolve/" in path for _, path, _, _ in fake.requests)
        assert not (tmp_path / "foreign").exists()

    original, cfg = hub.from_pretrained(trained.run)  # load_model: the EMA weights
    back, back_cfg = hub.from_pretrained(tmp_path / "pulled")
    assert back_cfg == cfg
    for other in (back, cached):
        same_weights(other, original)
        assert torch.equal(logits(other, cfg.model), logits(original, cfg.model))
    assert not (tmp_path / "pulled" / ".cache").exists()  # huggingface_hub's bookkeeping is not left behind
    # Evaluate reads the pulled folder like any checkpoint.
    ev = run_cli(["evaluate", "--checkpoint", str(tmp_path / "pulled"), "--text", "hello world", "--json"])
    assert ev.rc == 0, ev.err
    for res in (pushed, pulled):
        assert TOKEN not in res.out + res.err
    assert not any(TOKEN.encode() in body for body in fake.repos["me/tiny"].values())


def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


def test_offline_says_so(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port())
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pushed = run_cli(["push", str(trained.run), "me/tiny", "--eval_bytes", "0"])
    pulled = run_cli(["pull", "me/tiny", "--out", str(tmp_path / "p")])
    for res, verb in ((pushed, "push to"), (pulled, "download")):
        assert res.rc == 1 and "cannot reach the Hugging Face Hub at http://127.0.0.1" in res.err, res.err
        assert f"to {verb} 'me/tiny'" in res.err and TOKEN not in res.out + res.err
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".tmp-*"))


def test_unauthorised_and_missing_token_name_hf_token(trained, tmp_path, monkeypatch):
    with FakeHub("hf_TheRightToken") as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        pushed = run_cli(["push", str(trained.run), "me/tiny", "--eval_bytes", "0"])
        pulled = run_cli(["pull", "me/tiny", "--out", str(tmp_path / "p")])
        monkeypatch.delenv("HF_TOKEN")
        sent = len(fake.requests)
        missing = run_cli(["push", str(trained.run), "me/tiny"])
        assert len(fake.requests) == sent  # without a token nothing is sent (and nothing evaluated)
        assert "me/tiny" not in fake.repos
    for res in (pushed, pulled):
        assert res.rc == 1 and "(401)" in res.err and "HF_TOKEN" in res.err, res.err
        assert TOKEN not in res.out + res.err
    assert "write access" in pushed.err and "read access" in pulled.err
    assert missing.rc == 1 and "no Hugging Face token" in missing.err and "HF_TOKEN" in missing.err
