"""One rule for how a job ended (lifecycle.final_status), whoever notices the end: a job that reported
'cancelled' before its server died stays 'cancelled' (it was once marked interrupted, "reported no result")."""

from __future__ import annotations

import json
from pathlib import Path

from mcp_server.jobs import JobManager
from mcp_server.lifecycle import CANCEL_FILE, OLD_FOLLOW_SESSION_ENV, follow_session_from_env, worker_env
from mcp_server.workspace import Workspace


def _as_if_running(ws: Path, job_id: str, result_status: str) -> None:
    """The trained job, rewritten as if its server died while it ran: job.json says running (worker gone, no
    exit.json), its event log ends with a result of ``result_status``."""
    job = ws / "jobs" / job_id
    events = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    for ev in events:
        if ev["event"] == "done":
            ev["data"]["status"] = result_status
    (job / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    rec = json.loads((job / "job.json").read_text())
    rec.update(status="running", result=None, reason=None, finished_at=None, pid=None, launcher_pid=None)
    (job / "job.json").write_text(json.dumps(rec))
    (job / "exit.json").unlink(missing_ok=True)


def test_a_job_that_reported_cancelled_before_its_server_died_stays_cancelled(trained_ws):
    _as_if_running(trained_ws, "job-0001", "cancelled")
    job = JobManager(Workspace(trained_ws)).get("job-0001")
    assert job.status == "cancelled", job.record.reason
    assert json.loads((trained_ws / "jobs" / "job-0001" / "job.json").read_text())["status"] == "cancelled"


def test_a_job_cancelled_because_its_server_shut_down_is_interrupted(trained_ws):
    _as_if_running(trained_ws, "job-0001", "cancelled")
    (trained_ws / "jobs" / "job-0001" / CANCEL_FILE).write_text("shutdown: the server exited\n")
    job = JobManager(Workspace(trained_ws)).get("job-0001")
    assert job.status == "interrupted" and "server shut down" in job.record.reason


def test_a_job_that_vanished_without_a_result_is_interrupted(trained_ws):
    _as_if_running(trained_ws, "job-0001", "completed")
    lines = (trained_ws / "jobs" / "job-0001" / "metrics.jsonl").read_text().splitlines()
    (trained_ws / "jobs" / "job-0001" / "metrics.jsonl").write_text(
        "".join(ln + "\n" for ln in lines if json.loads(ln)["event"] != "done"))
    job = JobManager(Workspace(trained_ws)).get("job-0001")
    assert job.status == "interrupted" and "reported no result" in job.record.reason


def test_the_old_follow_session_variable_still_works_with_a_warning(caplog):
    assert follow_session_from_env({OLD_FOLLOW_SESSION_ENV: "1"}) is True
    assert "deprecated" in caplog.text
    assert follow_session_from_env({"BT_JOBS_FOLLOW_SESSION": "1"}) is True
    assert follow_session_from_env({}) is False


def test_a_worker_started_by_a_torchrun_rank_gets_no_rendezvous_variables():
    base = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x", "PATH": "/bin",
            OLD_FOLLOW_SESSION_ENV: "1"}
    env = worker_env(base, follow_session=False)
    assert env == {"PATH": "/bin", "PYTHONUNBUFFERED": "1"}
    assert worker_env({}, follow_session=True)["BT_JOBS_FOLLOW_SESSION"] == "1"
