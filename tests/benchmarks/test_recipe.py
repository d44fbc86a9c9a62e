"""bench_recipe's plumbing: variants trained and scored through the CLI (a few updates on the built-in corpus),
the paired deltas and the table. Budgets are in updates, or a time budget with no assertion on timing."""

import math

import pytest

from benchmarks import bench_recipe
from benchmarks.bench_recipe import RECIPE, VARIANTS, Variant, markdown, summarise

TINY = ["--data", "builtin", "--seeds", "0", "--jobs", "1", "--headline", "none", "--eval_max_bytes", "1024",
        "--set", "layers=1", "d_model=32", "nhead=2", "max_seq_len=72", "batch_size=4"]


def test_two_variants_train_and_score_through_the_cli(tmp_path):
    out = bench_recipe.main([*TINY, "--steps", "3", "--variants", "best", "adamw", "--out", str(tmp_path)])
    best, adamw = out["runs"]
    for row in (best, adamw):
        assert "error" not in row, row.get("error")
        assert row["status"] == "completed" and row["updates"] == 3
        assert row["val_bytes"] == 1024 and row["context_bits"] == 54  # 3/4 of 72 bits, whole frames
        assert 0 < row["bpb"] < 20 and math.isfinite(row["bpb"])
        assert row["train_command"].startswith("bit-transformer --threads 1 train --data builtin --arch framed")
        assert "--layers 1 " in row["train_command"] and "--steps 3" in row["train_command"]
    assert "--optimizer muon" in best["train_command"] and "--optimizer adamw" in adamw["train_command"]
    # the two runs differ only in the optimizer, so their scores differ and the paired delta is exact
    assert adamw["delta"] == round(adamw["bpb"] - best["bpb"], 4) != 0
    assert out["variants"][1]["mean_delta"] == adamw["delta"]
    table = (tmp_path / "bench_recipe.md").read_text()
    assert "| best | the recipe | 0 | 3 | - |" in table and "| adamw |" in table  # no time budget: no CPU s
    assert (tmp_path / "bench_recipe.json").is_file() and out["summary"].startswith("Tiny Shakespeare val")


def test_a_time_budget_reaches_the_trainer(tmp_path):
    out = bench_recipe.main([*TINY, "--budget", "3s", "--variants", "best", "--out", str(tmp_path)])
    (row,) = out["runs"]
    assert "error" not in row, row.get("error")
    assert "--time_budget 3s --budget_clock cpu" in row["train_command"]
    assert row["status"] == "completed" and row["updates"] >= 1 and row["bpb"] > 0 and row["budget_used_s"] > 0


def test_each_ablation_changes_the_recipe():
    assert VARIANTS[0] == Variant("best", "the recipe", {})
    names = [v.name for v in VARIANTS]
    assert len(set(names)) == len(names)
    for v in VARIANTS[1:]:
        assert v.flags and all(RECIPE[k] != value for k, value in v.flags.items()), v
    assert VARIANTS[1].config({"layers": "2"}) == {**RECIPE, **VARIANTS[1].flags, "layers": "2"}


def test_paired_deltas_and_means():
    rows = [{"label": "best", "seed": 0, "bpb": 2.0}, {"label": "best", "seed": 1, "bpb": 2.2},
            {"label": "flat", "seed": 0, "bpb": 2.5}, {"label": "flat", "seed": 1, "bpb": 2.6},
            {"label": "bf16", "seed": 0, "error": "train exit 1"}, {"label": "bf16", "seed": 1, "bpb": 2.3}]
    for r in rows:
        r.update(updates=10, epochs=0.5, budget_used_s=296.2)
    variants = [Variant("best", "the recipe", {}), Variant("flat", "flat", {"arch": "flat"}),
                Variant("bf16", "bf16", {"amp": "bf16"})]
    best, flat, bf16 = summarise(rows, variants)
    assert best["mean_bpb"] == 2.1 and best["mean_delta"] == 0.0
    assert flat["mean_bpb"] == 2.55 and flat["mean_delta"] == pytest.approx(0.45)
    assert bf16["mean_bpb"] == 2.3 and bf16["mean_delta"] == pytest.approx(0.1) and bf16["failed"] == [0]
    table = markdown(rows, [best, flat, bf16], [], "5m")
    assert "| flat | flat | 0 | 10 | 296 | 0.50 | 2.500 | +0.500 | 2.550 (+0.450) |" in table
    assert "FAILED" in table
