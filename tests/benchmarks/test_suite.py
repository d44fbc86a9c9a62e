"""The suite runner: isolation (a failing, hanging or missing benchmark does not stop the suite), stale
results, the generated block in docs/benchmarks.md and the registry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import suite
from benchmarks.suite import BEGIN, END, REGISTRY, Bench, replace_block, run_one, run_suite, table, update_docs


@pytest.fixture(autouse=True)
def _published(tmp_path, monkeypatch) -> Path:
    """Each test gets its own published results file, never the repository's."""
    path = tmp_path / "published" / "suite.json"
    monkeypatch.setattr(suite, "PUBLISHED", path)
    return path


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text("import json, sys, pathlib, time\nout = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])\n"
                    + body)
    return str(path)


def _bench(name: str, target: str, **kw) -> Bench:
    return Bench(name, f"what {name}", target, ("--q",), ("--f",), 1, 1, result=f"{name}.json", **kw)


GOOD = ("out.mkdir(parents=True, exist_ok=True)\n"
        "(out / 'good.json').write_text(json.dumps({'summary': 'fast: 2.00x'}))\n")
BAD = "print('starting'); print('boom: something broke'); sys.exit(3)\n"


def test_failing_benchmark_is_reported_and_the_suite_continues(tmp_path):
    benches = [_bench("bad", _script(tmp_path, "bad", BAD)), _bench("good", _script(tmp_path, "good", GOOD)),
               _bench("absent", "benchmarks.no_such_benchmark_module")]
    out = tmp_path / "results"
    result = run_suite(benches, quick=True, out=out, threads=1, echo=False)
    by_name = {e["name"]: e for e in result["entries"]}
    assert by_name["bad"]["status"] == "failed" and by_name["bad"]["exit_code"] == 3
    assert "boom: something broke" in by_name["bad"]["summary"]
    assert by_name["good"]["status"] == "ok" and by_name["good"]["summary"] == "fast: 2.00x"
    assert by_name["absent"]["status"] == "missing"
    saved = json.loads((out / "suite.json").read_text())
    assert [e["name"] for e in saved["entries"]] == ["bad", "good", "absent"]
    assert saved["machine"]["torch"] and saved["machine"]["cpu_count"] >= 1 and "date" in saved["machine"]
    table = (out / "suite.md").read_text()
    assert "| what good |" in table and "fast: 2.00x" in table and "FAILED" in table
    assert (out / "bad.log").read_text().splitlines()[-1] == "boom: something broke"


def test_stale_result_is_not_reported(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "quiet.json").write_text(json.dumps({"summary": "an old number"}))
    entry = run_one(_bench("quiet", _script(tmp_path, "quiet", "pass\n")), True, out, threads=1, echo=False)
    assert entry["status"] == "failed" and "an old number" not in entry["summary"]


def test_hanging_benchmark_times_out(tmp_path):
    entry = run_one(_bench("hang", _script(tmp_path, "hang", "time.sleep(60)\n")), True, tmp_path, threads=1,
                    timeout=1.5, echo=False)
    assert entry["status"] == "timeout" and entry["seconds"] < 30


def test_threads_reach_the_benchmark(tmp_path):
    body = ("import os\nout.mkdir(parents=True, exist_ok=True)\n"
            "(out / 't.json').write_text(json.dumps({'summary': os.environ['OMP_NUM_THREADS']}))\n")
    assert run_one(_bench("t", _script(tmp_path, "t", body)), True, tmp_path, threads=3, echo=False)["summary"] == "3"


def test_replace_block(tmp_path):
    text = f"# Title\n\nintro\n{BEGIN}\nold table\n{END}\nafter\n"
    new = replace_block(text, "| a | b |\n")
    assert new == f"# Title\n\nintro\n{BEGIN}\n| a | b |\n{END}\nafter\n"
    assert replace_block(new, "| a | b |") == new  # idempotent
    with pytest.raises(ValueError, match="bench-table:begin"):
        replace_block("no markers here", "x")
    with pytest.raises(ValueError, match="exactly one"):
        replace_block(text + BEGIN, "x")
    with pytest.raises(ValueError, match="comes before"):
        replace_block(f"{END}\n{BEGIN}", "x")


def test_update_docs_writes_table_and_plot(tmp_path):
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text(f"top\n{BEGIN}\n{END}\nbottom\n")
    plot = tmp_path / "q.png"
    plot.write_bytes(b"\x89PNG fake")
    figure = tmp_path / "docs" / "figures" / "quality.png"
    entries = [{"name": "quality", "mode": "full", "plot": str(plot)}]
    written = update_docs(doc, "| new |", entries, figure=figure)
    assert doc.read_text() == f"top\n{BEGIN}\n| new |\n{END}\nbottom\n"
    assert figure.read_bytes() == b"\x89PNG fake" and str(figure) in written
    with pytest.raises(ValueError, match="quick-mode"):
        update_docs(doc, "| x |", [{"name": "amp", "mode": "quick"}], figure=figure)
    assert "| new |" in doc.read_text()  # a refused update leaves the page alone
    with pytest.raises(ValueError, match=r"benchmarks\.md must contain"):
        replace_block("", "x", where="docs/benchmarks.md")  # the error names the page to fix


def test_the_table_links_from_docs_and_is_published_once(monkeypatch):
    """The generated block lives in docs/benchmarks.md only; its links resolve from that folder."""
    monkeypatch.setattr(suite, "PUBLISHED", suite.ROOT / "docs" / "benchmarks" / "suite.json")
    machine = {"cpu": "x", "cpu_count": 2, "torch": "t", "python": "p", "date": "2026-01-01", "threads": 1}
    entry = {"name": "quality", "what": "w", "command": "c", "summary": "s", "status": "ok", "plot": "p.png",
             "started": "2026-01-01T00:00:00+00:00"}
    block = table([entry], machine, doc=suite.DOC)
    assert "](benchmarks/suite.json)" in block and "](figures/quality.png)" in block
    assert "--update-docs" in block
    for target in ("benchmarks/suite.json", "figures/quality.png"):
        assert (suite.DOC.parent / target).is_file(), target
    docs = suite.DOC.read_text()
    assert docs.count(BEGIN) == 1 and docs.count(END) == 1
    readme = (suite.ROOT / "README.md").read_text()
    assert BEGIN not in readme and "quality.png" not in readme  # no second copy of the figures


def test_a_partial_run_keeps_the_published_rows_and_publishes_its_own(tmp_path, _published):
    _published.parent.mkdir(parents=True)
    _published.write_text(json.dumps({"entries": [
        {"name": "old", "what": "what old", "command": "c", "mode": "full", "status": "ok", "summary": "1.5x",
         "started": "2026-01-02T00:00:00+00:00"},
        {"name": "good", "what": "what good", "command": "c", "mode": "full", "status": "ok", "summary": "stale",
         "started": "2026-01-02T00:00:00+00:00"}]}))
    result = run_suite([_bench("good", _script(tmp_path, "good", GOOD))], quick=False, out=tmp_path / "r",
                       threads=1, echo=False)
    rows = {e["name"]: e["summary"] for e in result["entries"]}
    assert rows == {"good": "fast: 2.00x", "old": "1.5x"}  # this run's result replaces the published one
    assert "2026-01-02 to " in result["table"] and "| what old | `c` | 1.5x |" in result["table"]
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"{BEGIN}\n{END}\n")
    written = update_docs(doc, result["table"], result["entries"], figure=tmp_path / "fig.png")
    assert str(_published) in written
    published = {e["name"]: e for e in json.loads(_published.read_text())["entries"]}
    assert published["good"]["summary"] == "fast: 2.00x" and published["good"]["commit"] == suite.git_commit()


def test_registry_names_and_arguments(tmp_path):
    assert list(REGISTRY) == ["codec", "telemetry", "throughput", "amp", "memory", "quality", "speed", "int8", "int4",
                              "server", "distributed", "diffusion", "recipe", "distill"]
    for b in REGISTRY.values():
        assert b.est_full_s >= b.est_quick_s > 0
        argv = b.argv(True, tmp_path)
        assert str(tmp_path) in " ".join(argv), b.name  # every benchmark writes where the suite reads
        if b.name != "distributed":  # the lead's module may land later; the others must exist
            assert b.available(), b.name
    # int4 (two Trainer runs + fine-tunes) and distill (a 15-min teacher, four 5-min students) are the long ones
    assert sum(b.est_quick_s for b in REGISTRY.values()) < 11 * 60
    assert sum(b.est_full_s for b in REGISTRY.values()) < 190 * 60


def test_cli_plan_and_bad_names():
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--plan", "--quick"], capture_output=True, text=True,
                         cwd=suite.ROOT)
    assert run.returncode == 0 and "quick mode" in run.stdout and "bench_throughput" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "nonsense"], capture_output=True, text=True,
                         cwd=suite.ROOT)
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr
    for flag in ("--update-docs", "--update-readme"):  # the old spelling is an alias of the new one
        quick = subprocess.run([sys.executable, "-m", "benchmarks", flag, "--quick", "codec"], capture_output=True,
                               text=True, cwd=suite.ROOT)
        assert quick.returncode == 2 and "--update-docs writes the published numbers" in quick.stderr, flag
    missing = subprocess.run([sys.executable, "-m", "benchmarks", "--update-docs", "--doc", "nowhere.md", "codec"],
                             capture_output=True, text=True, cwd=suite.ROOT)
    assert missing.returncode == 2 and "nowhere.md" in missing.stderr
