"""The typed job pipeline: engine record -> event line -> JobRecord -> compact view (mcp_server/events.py, job.py)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bit_transformer.records import (
    CheckpointInfo,
    CorpusInfo,
    EvalMetrics,
    GateDecision,
    GrowthEvent,
    StepMetrics,
    TrainPlan,
    TrainResult,
)
from bit_transformer.schedule import PlateauSignal
from mcp_server.events import KINDS, EventReader, EventWriter, parse
from mcp_server.job import Job, JobRecord, TrainRequest, load_record
from mcp_server.jobs import JobManager
from mcp_server.tools.compact import reply
from mcp_server.tools.training import job_view
from mcp_server.workspace import Workspace

from .conftest import TRAIN_STEPS

PLAN = TrainPlan(micro_batches_per_epoch=5, accum_steps=1, updates_per_epoch=5, epochs=1, total_updates=5,
                 scheduler_horizon=5, precision="fp32", device="cpu", compile_requested=False, batch_size=8,
                 seq_len=72, params=1234, n_train_windows=40)


def _step(update: int, loss: float = 0.5) -> StepMetrics:
    return StepMetrics(update=update, micro_step=update, epoch=0, loss=loss, raw_loss=None, compressed_loss=None,
                       lr=1e-3, compress_prob=0.0, ponder_cost=0.0, grad_norm=1.0, bits_per_s=100.0, elapsed_s=1.0,
                       eta_s=4.0, precision="fp32")


EVAL = EvalMetrics(update=3, val_loss=0.6, val_bpb=7.79, gate=GateDecision(triggered=False, ema={"loss": 0.6},
                                                                           observations=1, in_burn_in=True))
# What the worker emits for each event kind: an engine record, or the plain dict the worker builds.
PAYLOADS = {
    "started": {"pid": 4242, "python": "3.11.0"},
    "data": CorpusInfo(source_id="builtin:tiny", content_hash="abc", n_bytes=900, train_bytes=810, val_bytes=90,
                       cache_hit=True, load_s=0.01),
    "loader": {"loader_len": 5, "train_windows": 40},
    "plan": PLAN,
    "step": _step(1, loss=float("nan")),
    "eval": EVAL,
    "telemetry": {"update": 3, "K_input": 0.1, "C_input": 0.9, "K_pred": 0.2, "C_pred": 0.8, "S": 0.6,
                  "attention_entropy": [[1.0, 2.0]], "mean_layers_used": None, "halting_mean": None},
    "checkpoint": CheckpointInfo(name="update-0000003", path="/ws/runs/job-0001/checkpoints/update-0000003",
                                 update=3, kind="periodic"),
    "plateau": PlateauSignal(update=3, val_loss=0.6, best_val_loss=0.5, lr_before=1e-3, lr_after=7e-4, drops=1,
                             scale_up_requested=True),
    "scale_up": GrowthEvent(update=3, layers=3, params_before=1000, params_after=1500, max_logit_change=0.0),
    "runtime": {"attention": [{"layer": 0, "is_causal": True}], "mask_cache": {"hits": 3, "misses": 1},
                "torch": "2.5", "threads": 2, "python": "3.11.0"},
    "done": TrainResult(status="completed", plan=PLAN, updates_done=5, last_step=_step(5), last_eval=EVAL,
                        checkpoint="/ws/runs/job-0001/checkpoints/update-0000005", best_val_bpb=7.79),
    "error": {"reason": "ValueError: boom", "type": "ValueError"},
}


def _data(payload):
    return payload.model_dump() if hasattr(payload, "model_dump") else payload


def test_every_event_kind_round_trips_through_the_log(tmp_path):
    assert set(PAYLOADS) == set(KINDS)  # a new event kind needs a payload here
    path = tmp_path / "metrics.jsonl"
    w = EventWriter(path)
    for kind, payload in PAYLOADS.items():
        w.emit(kind, payload)
    w.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["event"] for row in lines] == list(PAYLOADS)
    assert lines[4]["data"]["loss"] == "nan"  # strict JSON on disk
    events = EventReader(path).read_events()
    assert [ev.event for ev in events] == list(PAYLOADS)
    for ev, (kind, payload) in zip(events, PAYLOADS.items(), strict=True):
        got, want = ev.data.model_dump(), _data(payload)
        if kind == "step":
            assert math.isnan(got.pop("loss")) and math.isnan(want.pop("loss"))
        assert got == want, kind
    assert isinstance(events[5].data, EvalMetrics) and isinstance(events[11].data, TrainResult)


def test_damaged_and_unknown_lines_are_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    w = EventWriter(path)
    w.emit("step", _step(1))
    w.close()
    with open(path, "a") as f:
        f.write('{"event": "step", "t": 1, "data": {"upd\n')  # torn
        f.write('{"event": "mystery", "t": 1, "data": {}}\n')  # unknown kind
        f.write('{"event": "step", "t": 1, "data": {"update": "seven"}}\n')  # known kind, bad payload
        f.write('[1, 2]\n')
    w = EventWriter(path)
    w.emit("step", _step(2))
    w.close()
    with caplog.at_level(logging.WARNING, logger="mcp_server.events"):
        events = EventReader(path).read_events()
    assert [ev.data.update for ev in events] == [1, 2]
    assert "damaged line" in caplog.text and "unknown event kind" in caplog.text and "invalid payload" in caplog.text
    assert parse({"event": "step"}) is None


def test_a_payload_that_does_not_fit_is_still_logged_untyped(tmp_path, capfd):
    path = tmp_path / "metrics.jsonl"
    w = EventWriter(path)
    w.emit("step", {"update": 1})  # never stops training: written as is, skipped by readers
    w.close()
    assert json.loads(path.read_text())["data"] == {"update": 1}
    assert "does not fit the event union" in capfd.readouterr().err
    assert EventReader(path).read_events() == []


def test_a_job_record_folds_from_the_real_event_log(trained_ws):
    jdir = trained_ws / "jobs" / "job-0001"
    raw = [json.loads(line) for line in (jdir / "metrics.jsonl").read_text().splitlines()]
    kinds = {row["event"] for row in raw}
    assert {"started", "data", "loader", "plan", "step", "eval", "telemetry", "checkpoint", "runtime", "done"} <= kinds
    events = EventReader(jdir / "metrics.jsonl").read_events()
    assert len(events) == len(raw)  # every line the worker wrote is a valid event

    record, stale = load_record(jdir)
    assert not stale and record.history == [] and record.evals == []  # lists come from the log, not job.json
    job = Job(jdir, record)
    job.ensure_loaded()
    rec = job.record
    steps = [row["data"] for row in raw if row["event"] == "step"]
    assert [h.update for h in rec.history] == [s["update"] for s in steps] == list(range(1, TRAIN_STEPS + 1))
    assert rec.last_step.update == TRAIN_STEPS and rec.plan.total_updates == TRAIN_STEPS
    assert [e.update for e in rec.evals] == [row["data"]["update"] for row in raw if row["event"] == "eval"]
    saved = [row["data"]["name"] for row in raw if row["event"] == "checkpoint"]
    assert [c.name for c in rec.checkpoints][: len(saved)] == list(dict.fromkeys(saved))
    assert rec.result.status == "completed" and rec.status == "completed"
    assert rec.checkpoint == f"job-0001/{Path(rec.result.checkpoint).name}"
    assert rec.data.n_bytes > 0 and rec.loader_len == rec.plan.micro_batches_per_epoch
    assert rec.telemetry is not None and rec.runtime.threads >= 1
    # The config is stored once: in request.json, not in job.json.
    on_disk = json.loads((jdir / "job.json").read_text())
    assert "config" not in on_disk and "request" not in on_disk and "history" not in on_disk
    assert rec.request == TrainRequest.model_validate_json((jdir / "request.json").read_text())
    assert rec.request.config["model"]["d_model"] == 32


OLD_CONFIG = {"model": {"layers": 1, "d_model": 16}, "train": {"batch_size": 4}, "data": {"source": "builtin"}}


def _old_job_dir(ws: Path, job_id: str, *, with_request_json: bool) -> Path:
    """A job folder as the previous version wrote it: the config copied into job.json, a partial last_step."""
    d = ws / "jobs" / job_id
    d.mkdir(parents=True)
    old = {"job_id": job_id, "kind": "train", "status": "completed", "reason": None, "created_at": 5.0,
           "started_at": 6.0, "finished_at": 9.0, "pid": 123, "launcher_pid": 123, "pid_start": 1,
           "request": {"steps": 2, "epochs": None, "resume": False, "run": job_id, "processes": 1},
           "config": OLD_CONFIG, "plan": {**PLAN.model_dump(), "steps_per_epoch": 5},
           "data": {"source_id": "builtin:tiny", "n_bytes": 900, "train_bytes": 810, "val_bytes": 90,
                    "cache_hit": False, "cache_path": "tiny-123.bits", "load_s": 0.1},
           "last_step": {"update": 2, "loss": "nan"}, "last_eval": None, "checkpoint": f"{job_id}/update-0000002",
           "result": None, "runtime": None, "cancel_requested": False, "growth": [{"update": 1}], "exit_code": 0}
    (d / "job.json").write_text(json.dumps(old))
    if with_request_json:
        (d / "request.json").write_text(json.dumps({"config": OLD_CONFIG, "steps": 2, "run": job_id}))
    w = EventWriter(d / "metrics.jsonl")
    w.emit("started", {"pid": 123})
    w.emit("plan", PLAN)
    for u in (1, 2):
        w.emit("step", _step(u, loss=0.5 - u / 10))
    w.emit("done", TrainResult(status="completed", plan=PLAN, updates_done=2, last_step=_step(2, loss=0.3),
                               checkpoint=f"/old/runs/{job_id}/checkpoints/update-0000002"))
    w.close()
    return d


@pytest.mark.parametrize("with_request_json", [False, True])
def test_an_old_format_job_dir_still_loads(tmp_path, with_request_json):
    ws = Workspace(tmp_path / "ws")
    d = _old_job_dir(ws.root, "job-0007", with_request_json=with_request_json)
    record, stale = load_record(d)
    assert stale  # the partial last_step did not fit StepMetrics: rebuilt from the log
    assert record.request.config == OLD_CONFIG and record.request.steps == 2 and record.run == "job-0007"
    assert record.data.source_id == "builtin:tiny" and record.plan == PLAN
    manager = JobManager(ws)
    job = manager.get("job-0007")
    assert job is not None and job.status == "completed"
    assert job.update() == 2 and job.record.last_step.loss == pytest.approx(0.3)  # replayed at start (stale)
    view = reply(job_view(job, include=["request", "growth", "plan"])).structured_content
    assert view["request"] == {"steps": 2, "resume": False, "run": "job-0007", "processes": 1}
    assert view["growth"] == [] and view["plan"]["steps_per_epoch"] == 5  # growth comes from events only
    assert view["checkpoint"] == "job-0007/update-0000002"
    job.save()  # the next write uses the new layout
    assert "config" not in json.loads((d / "job.json").read_text())
    assert load_record(d)[0].request.config == OLD_CONFIG


def test_a_damaged_request_json_keeps_the_job_and_says_what_replaced_it(tmp_path):
    ws = Workspace(tmp_path / "ws")
    d = _old_job_dir(ws.root, "job-0003", with_request_json=True)
    raw = json.loads((d / "job.json").read_text())
    (d / "job.json").write_text(json.dumps({k: v for k, v in raw.items() if k not in ("config", "request")}))
    (d / "request.json").write_text('{"config": {"mod')  # the one copy of the config, torn by a crash
    ckpt = ws.runs_dir / "job-0003" / "checkpoints" / "update-0000002"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"config": OLD_CONFIG}))
    job = JobManager(ws).get("job-0003")
    assert job is not None and job.status == "completed" and job.update() == 2  # status and metrics intact
    assert job.record.request.config == OLD_CONFIG and job.run == "job-0003"
    assert [p.name for p in d.glob("request.json.bad-*")]  # the damaged file is kept, not overwritten
    notes = " ".join(ws.pending_notices())
    assert "request.json was damaged" in notes and "checkpoint job-0003/update-0000002" in notes


def test_an_old_job_dir_without_any_config_gets_the_workspace_config(tmp_path):
    ws = Workspace(tmp_path / "ws")
    d = _old_job_dir(ws.root, "job-0004", with_request_json=False)
    raw = json.loads((d / "job.json").read_text())
    del raw["config"]
    (d / "job.json").write_text(json.dumps(raw))
    job = JobManager(ws).get("job-0004")
    assert job is not None and job.status == "completed"
    assert "job-0004/request.json was missing" in " ".join(ws.pending_notices())
    assert "the workspace config" in " ".join(ws.pending_notices())


def test_a_diverged_loss_reads_nan_in_the_compact_view(tmp_path):
    d = tmp_path / "job-0001"
    d.mkdir()
    w = EventWriter(d / "metrics.jsonl")
    w.emit("plan", PLAN)
    w.emit("step", _step(1, loss=float("nan")))
    w.emit("eval", EVAL.model_copy(update={"val_loss": float("inf"), "val_bpb": float("inf")}))
    w.close()
    job = Job(d, JobRecord(job_id="job-0001", status="running", request=TrainRequest(config={})))
    job.drain()
    assert math.isnan(job.record.last_step.loss)  # the record keeps a real float
    out = reply(job_view(job, history=5, include=["last_step"]))
    data = out.structured_content
    assert data["step"]["loss"] == "nan" and "bpb" not in data["step"]
    assert data["eval"]["val_bpb"] == "inf" and data["last_step"]["loss"] == "nan"
    assert data["history"] == [{"update": 1, "epoch": 0, "loss": "nan", "lr": 1e-3, "compress_prob": 0.0,
                                "grad_norm": 1.0, "precision": "fp32"}]
    json.loads(out.content[0].text)  # strict JSON: no bare NaN


def test_the_records_and_the_job_pipeline_import_no_torch():
    code = ("import sys, bit_transformer.records, mcp_server.events, mcp_server.job, mcp_server.views, "
            "mcp_server.jobs; bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
