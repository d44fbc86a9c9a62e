"""The dashboard MCP App without a browser: tool bindings and size, the self-contained resource, the text
fallback, the data the app draws (against get_job), the compressor lines and the PNG in bits per byte.
The browser test (test_dashboard_browser.py) renders it in Chromium with the official host bridge."""

from __future__ import annotations

import json
import math
import re

import pytest
from mcp.client import Client
from mcp.client.extension import ClientExtension

from mcp_server.dashboard import URI, html

from .conftest import TRAIN_STEPS, call, error_text, new_server

pytestmark = pytest.mark.anyio
BPB = 9 / math.log(2)  # nats per bit -> bits per byte


class AppsClient(ClientExtension):
    """A client that renders MCP Apps (what hosts such as Claude or VS Code advertise)."""

    identifier = "io.modelcontextprotocol/ui"

    def settings(self):
        return {"mimeTypes": ["text/html;profile=mcp-app"]}


async def test_tools_are_bound_to_the_app_and_small(tiny_ws):
    server = new_server(tiny_ws)
    async with Client(server, extensions=[AppsClient()]) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    async with Client(server) as c:  # no Apps: the app-only tool is not listed (so not in the model's context)
        plain = {t.name for t in (await c.list_tools()).tools}
        assert not (await c.call_tool("dashboard_data", {})).is_error  # ...but still answers
    assert plain == set(tools) - {"dashboard_data"}
    board, data = tools["dashboard"], tools["dashboard_data"]
    assert board.meta["ui"] == {"resourceUri": URI, "visibility": ["model", "app"]}
    assert data.meta["ui"] == {"resourceUri": URI, "visibility": ["app"]}  # never in the model's view
    assert tools["train"].meta["ui"] == {"resourceUri": URI}  # starting a job shows the dashboard too
    for tool in (board, data):
        assert tool.output_schema is None
        assert len(tool.model_dump_json(by_alias=True, exclude_none=True)) < 700, tool.name


async def test_app_resource_is_self_contained(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        listed = {str(r.uri): r for r in (await c.list_resources()).resources}
        content = (await c.read_resource(URI)).contents[0]
    assert listed[URI].mime_type == content.mime_type == "text/html;profile=mcp-app"
    page = content.text
    assert page == html() and "<script>" in page and "ui/initialize" in page
    # Nothing loads from the network: no external scripts, styles, images, fonts or fetches.
    assert not re.search(r"<script[^>]+src=|<link\b|@import|url\(|\bfetch\(|XMLHttpRequest|WebSocket|EventSource", page)
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= {"http://www.w3.org/2000/svg"}


async def test_dashboard_tool_degrades_to_a_status_line(trained_ws):
    server = new_server(trained_ws)
    async with Client(server) as c:
        plain = await c.call_tool("dashboard", {})
        missing = error_text(await c.call_tool("dashboard", {"job_id": "job-0042"}))
    async with Client(server, extensions=[AppsClient()]) as c:
        rich = await c.call_tool("dashboard", {"job_id": "job-0001"})
    text = plain.content[0].text
    assert text.startswith(f"job-0001 completed: update {TRAIN_STEPS}/{TRAIN_STEPS}, train ")
    assert "get_job('job-0001')" in text and "bt://jobs/job-0001/loss.png" in text and len(text) < 300
    assert rich.content[0].text.endswith("The dashboard shows it live.") and len(rich.content[0].text) < 300
    assert plain.structured_content == rich.structured_content == {"job_id": "job-0001"}
    assert "unknown job_id 'job-0042'" in missing


async def test_dashboard_data_is_the_jobs_record(trained_ws):
    server = new_server(trained_ws)
    app = server.app_state
    async with Client(server) as c:
        snap = await call(c, "dashboard_data", {})
        tail = await call(c, "dashboard_data", {"job_id": "job-0001", "since": TRAIN_STEPS - 2})
        unknown = await call(c, "dashboard_data", {"job_id": "job-0042"})
    found = app.jobs.get("job-0001")
    found.ensure_loaded()
    record = found.record
    job = snap["job"]
    assert (job["id"], job["status"], job["active"]) == ("job-0001", "completed", False)
    assert job["update"] == job["total_updates"] == found.update() == TRAIN_STEPS
    # One point per update, in bits per byte, with the schedules the trainer reported.
    assert [s[0] for s in snap["steps"]] == list(range(1, TRAIN_STEPS + 1))
    for (u, bpb, lr, cp), h in zip(snap["steps"], record.history, strict=True):
        assert u == h.update and bpb == pytest.approx(h.loss * BPB, rel=1e-4)
        assert lr == pytest.approx(h.lr, rel=1e-3) and cp == pytest.approx(h.compress_prob, abs=1e-4)
    assert [s[0] for s in tail["steps"]] == [TRAIN_STEPS - 1, TRAIN_STEPS]
    assert snap["evals"] == [[e.update, pytest.approx(e.val_bpb, rel=1e-4)] for e in record.evals]
    assert snap["evals"] and snap["gate"]["observations"] == len(snap["evals"]) and "loss" in snap["gate"]["ema"]
    assert {"K_input", "C_input", "S"} <= set(snap["telemetry"])
    run_cks = [name for name, _ in app.engine.checkpoints() if name.startswith("job-0001/")]
    assert len(run_cks) >= 2 and sorted(ck["name"] for ck in snap["checkpoints"]) == sorted(run_cks)
    current = app.ws.load_state().current_checkpoint
    assert [ck["name"] for ck in snap["checkpoints"] if ck["current"]] == [current] and snap["current_checkpoint"]
    assert snap["jobs"] == [{"id": "job-0001", "status": "completed"}] and snap["latest"] == "job-0001"
    assert unknown["job"] is None and "job-0042" in unknown["note"]


async def test_compressor_lines_are_the_validation_text_given_training(trained_ws):
    from bit_transformer.baselines import compressor_bpb
    from bit_transformer.bits import bits_to_bytes
    from bit_transformer.config import DataConfig
    from mcp_server.dashboard.data import CONTEXT_BYTES, compressor_baselines

    server = new_server(trained_ws)
    app = server.app_state
    record = app.jobs.get("job-0001").record
    got = compressor_baselines(app, record, block=True)
    corpus = app.engine.corpus(DataConfig.model_validate(record.request.config["data"]))
    val = bits_to_bytes(corpus.val, strict=False)[0]
    context = bits_to_bytes(corpus.train[-CONTEXT_BYTES * 9:], strict=False)[0]
    assert got == {k: round(v, 4) for k, v in compressor_bpb(val, context).items()}
    assert set(got) == {"gzip", "bzip2", "xz"} and all(0 < v < 9 for v in got.values())
    assert compressor_baselines(app, record, block=False) == got  # cached per corpus: no recomputation
    async with Client(server) as c:
        assert (await call(c, "dashboard_data", {}))["baselines"] == got


async def test_loss_png_plots_bits_per_byte_with_validation_and_compressors(trained_ws):
    from bit_transformer.loss_curve import loss_curve_figure
    from mcp_server.events import EventReader
    from mcp_server.resources import curve_points

    events = EventReader(trained_ws / "jobs" / "job-0001" / "metrics.jsonl").read_events()
    steps = [e.data.model_dump() for e in events if e.event == "step"]
    evals = [e.data.model_dump() for e in events if e.event == "eval"]
    fig = loss_curve_figure(curve_points(events), "job-0001", {"gzip": 3.1, "bzip2": 2.4, "xz": 2.5})
    ax = fig.axes[0]
    assert ax.get_ylabel() == "bits per byte"
    lines = {line.get_label(): line for line in ax.get_lines()}
    train, val = lines["train loss"], lines["validation"]
    assert list(train.get_xdata()) == [s["update"] for s in steps]
    assert list(train.get_ydata()) == pytest.approx([s["loss"] * BPB for s in steps], rel=1e-4)
    assert list(val.get_ydata()) == pytest.approx([e["val_bpb"] for e in evals], rel=1e-4)
    assert {k: lines[k].get_ydata()[0] for k in ("bzip2 2.40", "gzip 3.10", "xz 2.50")} == {
        "bzip2 2.40": 2.4, "gzip 3.10": 3.1, "xz 2.50": 2.5}
    server = new_server(trained_ws)
    async with Client(server) as c:  # the resource computes the job's own compressor lines (cached per corpus)
        png = (await c.read_resource("bt://jobs/job-0001/loss.png")).contents[0]
    assert png.mime_type == "image/png"
    cached = list(server.app_state.ws.cache_dir.glob("baselines-*.json"))
    assert len(cached) == 1 and set(json.loads(cached[0].read_text())["bpb"]) == {"gzip", "bzip2", "xz"}
