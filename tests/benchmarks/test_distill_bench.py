"""bench_distill's plumbing: teacher, scratch and distilled students trained and scored through the CLI (tiny
models on the built-in corpus, time budgets of a few CPU-seconds; nothing asserted on timing)."""

from benchmarks import bench_distill


def test_teacher_and_both_students_train_and_score_through_the_cli(tmp_path):
    out = bench_distill.main(["--data", "builtin", "--teacher_budget", "3s", "--budget", "2s", "--seeds", "0",
                              "--jobs", "1", "--eval_max_bytes", "1024", "--out", str(tmp_path),
                              "--set", "d_model=32", "nhead=2", "max_seq_len=72", "batch_size=4"])
    teacher, scratch, distilled = out["runs"]
    for row in (teacher, scratch, distilled):
        assert "error" not in row, row.get("error")
        assert row["status"] == "completed" and row["updates"] >= 1 and 0 < row["bpb"] < 20
        assert "--time_budget" in row["train_command"] and "--budget_clock cpu" in row["train_command"]
    assert "--layers 4 " in teacher["train_command"] and "--layers 2 " in scratch["train_command"]
    assert scratch["params"] == distilled["params"] < teacher["params"]
    assert f"--teacher {tmp_path / 'distill_runs' / 'teacher_s0'} --distill_weight 0.5" in distilled["train_command"]
    assert distilled["final_kl"] > 0 and "final_kl" not in scratch
    assert out["means"]["paired_delta"] == round(distilled["bpb"] - scratch["bpb"], 4)
    assert out["summary"].startswith("Tiny Shakespeare val") and "distilled" in out["summary"]
    assert "| distilled | half depth, distilled (alpha=0.5, T=1) | 0 |" in (tmp_path / "bench_distill.md").read_text()
