"""cli.py: the `bit-transformer` command, run in-process on tiny models (plus one real subprocess)."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bit_transformer.cli import build_parser, main
from bit_transformer.cli_flags import build_run_config, data_spec
from bit_transformer.config import ModelConfig, RunConfig, SafetyConfig, TrainConfig
from bit_transformer.progress import ProgressBar
from tests.seed_commands import SEED_FLAGS, SEED_IMPLIED

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--layers", "2", "--d_model", "32", "--nhead", "4", "--max_seq_len", "72", "--batch_size", "4",
        "--amp", "none", "--eval_every", "2", "--eval_batches", "2", "--dropout", "0"]


def corpus_text() -> str:
    lines = [f"Line {i}: the quick brown fox jumps over the lazy dog, and the cat sat on mat number {i % 7}.\n"
             for i in range(120)]
    return "".join(lines)


def parse_train(argv: list[str]) -> RunConfig:
    parser, flags = build_parser()
    args = parser.parse_args(["train", *argv])
    return build_run_config(args, flags)



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below: (run dir, text file, stdout, stderr)."""
    n = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("cli")
    text = tmp / "corpus.txt"
    text.write_text(corpus_text(), encoding="utf-8")
    run = tmp / "run"
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        rc = main(["--threads", "1", "train", *TINY, "--steps", "4", "--data", str(text), "--out", str(run)])
    finally:
        sys.stdout, sys.stderr = old
        torch.set_num_threads(n)
    assert rc == 0, err.getvalue()
    return SimpleNamespace(run=run, text=text, stdout=out.getvalue(), stderr=err.getvalue(), tmp=tmp)


def test_python_m_help_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "bit_transformer", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for cmd in ("train", "evaluate", "generate", "scale-up", "export-int8"):
        assert cmd in proc.stdout


@pytest.mark.parametrize("task", sorted(SEED_FLAGS))
def test_playbook_flags_parse_verbatim(task):
    cfg = parse_train(shlex.split(f"{SEED_IMPLIED} {SEED_FLAGS[task]}"))
    m, t = cfg.model, cfg.train
    assert (m.arch, m.block, m.dropout, t.optimizer) == ("flat", "classic", 0.1, "adamw")
    assert t.lr_schedule == ("onecycle" if task == "B" else "progressive_plateau")  # the seed's flag wins
    assert m.nhead == 8 and m.causal is True and m.chunk_size == 128
    assert m.reversible is True and m.checkpointing is True and t.amp == "bf16"
    if task == "A":
        assert (m.layers, m.d_model, t.batch_size, t.accum_steps) == (8, 256, 64, 2)
        assert m.act is True and m.full_attn_logging is False and t.lr_schedule == "progressive_plateau"
    if task == "B":
        assert (m.layers, m.d_model, t.batch_size, t.accum_steps) == (8, 128, 128, 1)
        assert t.quantization == "int8" and t.qat is True and m.act is False
    if task == "C":
        assert (m.layers, m.d_model, t.batch_size, t.accum_steps) == (16, 256, 48, 3)


def test_every_config_field_is_a_flag():
    _, flags = build_parser()
    for model, prefix in ((ModelConfig, ""), (TrainConfig, ""), (SafetyConfig, "safety.")):
        for name, field in model.model_fields.items():
            if field.annotation is SafetyConfig:
                continue
            assert f"--{prefix}{name}" in flags, name
    cfg = parse_train(["--safety.decay", "0.5", "--data.val_fraction", "0.2", "--chunk_size", "none", "--act",
                       "--steps", "7", "--lr", "0.001", "--epochs", "2"])
    assert cfg.train.safety.decay == 0.5 and cfg.data.val_fraction == 0.2
    assert cfg.model.chunk_size is None and cfg.model.act is True  # bare boolean flag means true
    assert (cfg.train.steps, cfg.train.lr, cfg.train.epochs) == (7, 0.001, 2)
    assert parse_train([]) == RunConfig()  # no flags: the config's defaults, untouched


def test_booleans_take_true_or_false_only(capsys):
    denoiser = ["--arch", "flat", "--causal", "FALSE", "--objective", "denoise", "--act", "True"]
    assert parse_train(denoiser).model.causal is False
    with pytest.raises(SystemExit) as exc:
        main(["train", "--act", "maybe"])
    assert exc.value.code == 2
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(RunConfig(model=ModelConfig(layers=3, d_model=48, nhead=4)).model_dump_json(), encoding="utf-8")
    cfg = parse_train(["--config", str(path), "--layers", "2"])
    assert cfg.model.layers == 2 and cfg.model.d_model == 48


def test_invalid_config_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["train", "--d_model", "30", "--nhead", "8", "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "divisible by nhead" in err
    assert not (tmp_path / "x").exists()


def test_data_shorthand():
    assert data_spec(["builtin"]) == {"source": "builtin", "paths": []}
    assert data_spec(["hf:wikitext:wikitext-2-raw-v1"]) == {"source": "hf", "hf_name": "wikitext",
                                                           "hf_config": "wikitext-2-raw-v1"}
    assert data_spec(["a.txt", "dir/*.txt"]) == {"source": "files", "paths": ["a.txt", "dir/*.txt"]}
    cfg = parse_train(["--data", "hf:tiny_shakespeare"])
    assert cfg.data.source == "hf" and cfg.data.hf_name == "tiny_shakespeare" and cfg.data.hf_config is None


PLAN = SimpleNamespace(total_updates=10, epochs=1, updates_per_epoch=10, batch_size=4, accum_steps=1, seq_len=72,
                       params=1234, precision="fp32", device="cpu")


def _step(update: int) -> SimpleNamespace:
    return SimpleNamespace(update=update, loss=0.5, lr=1e-3, bits_per_s=12_345.0, eta_s=75.0)


def test_progress_off_a_terminal_is_a_few_plain_lines():
    stream = io.StringIO()  # not a terminal, like a CI log or `2> file`
    bar = ProgressBar(stream, lines=5)
    bar("plan", PLAN)
    for u in range(1, 11):
        bar("step", _step(u))
    bar("eval", SimpleNamespace(update=5, val_loss=0.4, val_bpb=5.2, gate=None))
    text = stream.getvalue()
    assert "\r" not in text and "plan: 10 updates" in text
    assert "update 1/10  10% loss 0.5000 lr 1.00e-03 12.3 kbit/s ETA 01:15\n" in text
    progress = [line for line in text.splitlines() if line.startswith("update ")]
    assert [line.split()[1] for line in progress] == ["1/10", "3/10", "5/10", "7/10", "9/10", "10/10"]
    assert "\neval @ 5: val_loss 0.4000 val_bpb 5.200\n" in text


def test_progress_on_a_terminal_is_a_tqdm_bar():
    stream = io.StringIO()
    bar = ProgressBar(stream, terminal=True)
    bar("plan", PLAN)
    for u in range(1, 11):
        bar("step", _step(u))
    bar("eval", SimpleNamespace(update=10, val_loss=0.4, val_bpb=5.2, gate=None))
    bar("done", SimpleNamespace(status="completed", reason=None))
    text = stream.getvalue()
    assert "\r" in text and "10/10" in text and "loss 0.5000" in text
    assert "eval @ 10: val_loss 0.4000 val_bpb 5.200\n" in text and text.rstrip().endswith("done: completed")


def test_train_writes_checkpoint_and_progress(trained):
    assert (trained.run / "metrics.jsonl").is_file()
    assert (trained.run / "checkpoints" / "latest").is_file()
    assert "completed" in trained.stdout and "updates             4" in trained.stdout
    assert "plan: 4 updates" in trained.stderr
    assert "\r" not in trained.stderr and "update 4/4 100%" in trained.stderr  # stderr is a pipe: plain lines
    events = [json.loads(line)["event"] for line in (trained.run / "metrics.jsonl").read_text().splitlines()]
    assert events.count("step") == 4 and events[-1] == "done"


def test_the_latest_pointer_file_is_accepted_as_a_checkpoint(trained, capsys):
    args = ["generate", "--prompt", "a", "--max_bytes", "2", "--seed", "1", "--json"]
    assert main([*args, "--checkpoint", str(trained.run / "checkpoints" / "latest")]) == 0
    via_pointer = json.loads(capsys.readouterr().out)
    assert main([*args, "--checkpoint", str(trained.run)]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == via_pointer["text"] and via_pointer["new_bytes"] == 2


def test_evaluate_json_and_table(trained, capsys):
    text = "the quick brown fox jumps over the lazy dog"
    assert main(["evaluate", "--checkpoint", str(trained.run), "--text", text, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_bytes"] == len(text)
    assert 3.0 < report["bits_per_byte"] < 10.0  # 4 updates: about a coin flip, not nonsense
    assert set(report["compressors"]) == {"gzip", "bzip2", "xz"}
    assert len(report["loss_by_phase"]) == 9
    # Default input: the checkpoint's own corpus, validation split, compressors conditioned on train.
    assert main(["evaluate", "--checkpoint", str(trained.run), "--max_bytes", "300"]) == 0
    table = capsys.readouterr().out
    assert "validation split" in table and "bits per byte" in table and "xz bits per byte" in table
    assert "bytes                 300" in table


def test_generate_is_seeded_and_decodes(trained, capsys):
    argv = ["generate", "--checkpoint", str(trained.run), "--prompt", "Line 3", "--max_bytes", "12", "--seed", "7"]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert main(argv) == 0
    second = capsys.readouterr()
    assert first.out == second.out and first.out.startswith("Line 3")
    assert "parity ok" in first.err and "seed 7" in first.err
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity_ok"] is True and result["new_bytes"] == 12


def test_resume_continues_from_the_run_config(trained, capsys):
    run = trained.tmp / "resumed"
    argv = ["train", *TINY, "--data", str(trained.text), "--out", str(run), "--quiet", "--json"]
    assert main([*argv, "--steps", "2"]) == 0
    capsys.readouterr()
    # Resume with no model flags: the architecture comes from the run's checkpoint, not the defaults.
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "completed" and result["updates_done"] == 4
    assert result["plan"]["params"] < 50_000
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in steps if r["event"] == "step"] == [1, 2, 3, 4]  # continued, not restarted


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_scale_up_writes_a_bigger_checkpoint(trained, capsys):
    out = trained.tmp / "grown"
    assert main(["scale-up", "--checkpoint", str(trained.run), "--layers", "3", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["layers"] == 3
    assert info["report"]["max_logit_change"] < 1e-4  # new blocks start as identities
    assert (out / "model.safetensors").is_file()
    bpb = {}
    for ckpt in (trained.run, out):
        assert main(["evaluate", "--checkpoint", str(ckpt), "--text", "Line 1: the quick", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["n_bytes"] == 17
        bpb[ckpt] = report["bits_per_byte"]
    assert bpb[out] == pytest.approx(bpb[trained.run], abs=1e-4)
    # Training continues from the grown model: its weights and config, a fresh optimizer and schedule.
    run = trained.tmp / "grown-run"
    assert main(["train", "--init", str(out), "--steps", "2", "--out", str(run), "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "completed" and result["plan"]["total_updates"] == 2
    meta = json.loads((Path(result["checkpoint"]) / "meta.json").read_text())
    assert meta["config"]["model"]["layers"] == 3
    assert main(["train", "--init", str(out), "--layers", "4", "--out", str(run)]) == 2
    assert "--init fixes the architecture; drop --layers" in capsys.readouterr().err


def test_export_int8_then_evaluate_the_artifact(trained, capsys):
    out = trained.tmp / "int8"
    assert main(["export-int8", "--checkpoint", str(trained.run), "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantized_linears"] == 8  # 4 per block x 2 blocks
    assert info["int8_params"] == 2 * (4 * 32 * 32 + 2 * 32 * 128)  # every block matrix (qkv, out, up, down)
    # the framed default keeps its 256-way frame head (32 x 256) in fp32: a third of this 2 x 32 model's weights
    assert info["size_ratio"] > 1.7
    text = corpus_text()[:400]
    bpb = {}
    for ckpt in (trained.run, out):
        assert main(["evaluate", "--checkpoint", str(ckpt), "--text", text, "--json", "--no_compressors"]) == 0
        bpb[ckpt] = json.loads(capsys.readouterr().out)["bits_per_byte"]
    assert bpb[out] == pytest.approx(bpb[trained.run], rel=0.03)
    # The artifact carries the run config, so generate gets the safety floors from it.
    assert main(["generate", "--checkpoint", str(out), "--prompt", "Line", "--max_bytes", "4", "--seed", "1"]) == 0
    assert "parity ok" in capsys.readouterr().err


def test_export_int8_measures_quality_and_skips_it_with_a_note_when_the_corpus_is_gone(trained, capsys):
    assert main(["export-int8", "--checkpoint", str(trained.run), "--out", str(trained.tmp / "q-eval"),
                 "--eval-bytes", "100", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["eval_bytes"] == 100 and info["bpb_delta"] == pytest.approx(info["bpb_int8"] - info["bpb_fp32"])
    moved = trained.text.with_suffix(".away")
    trained.text.rename(moved)  # the checkpoint's corpus file is gone: the export still works, the check is skipped
    try:
        assert main(["export-int8", "--checkpoint", str(trained.run), "--out", str(trained.tmp / "q-none"),
                     "--cache_dir", str(trained.tmp / "empty-cache"), "--json"]) == 0
    finally:
        moved.rename(trained.text)
    out = capsys.readouterr()
    assert json.loads(out.out)["bpb_delta"] is None and "quality check skipped" in out.err
