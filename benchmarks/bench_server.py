"""MCP server responsiveness: start-up time to the first tools/list, and tool latency while a job trains.

    python -m benchmarks.bench_server [--requests 100] [--startups 3] [--keep-workspace]

Everything goes through the real stdio transport with the official client, exactly as an agent runs
it (``python -m mcp_server`` in a subprocess):

1. Start-up: spawn the server, initialize, list tools; wall time from spawn to the tools/list answer.
2. Idle latency of ``get_job``, ``get_config`` and ``telemetry`` (interleaved) before any training.
3. The same calls while a training job runs in the worker process (a model big enough to keep the
   CPU busy); the job's update counter before/after shows that it really trained meanwhile.

Writes benchmarks/results/bench_server.json and prints a markdown table (p50/p95/max in ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

RESULTS = Path(__file__).resolve().parent / "results"
TOOLS = ("get_job", "get_config", "telemetry")
BUSY = {"model": {"layers": 4, "d_model": 64, "nhead": 4, "max_seq_len": 144},
        "train": {"batch_size": 16, "eval_every": 20, "save_every": 100000, "amp": "none"},
        "data": {"max_bytes": 200000}}


def _params(ws: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", "--workspace", str(ws)],
                                 env={**os.environ, "BT_LOG_LEVEL": "WARNING"})


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _stats(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p95_ms": round(_pct(ms, 0.95), 2),
            "max_ms": round(max(ms), 2), "mean_ms": round(statistics.fmean(ms), 2)}


async def startup_times(ws: Path, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with Client(_params(ws), read_timeout_seconds=120) as c:
            await c.list_tools()
            out.append(time.perf_counter() - t0)
    return out


async def measure(c: Client, n: int, min_seconds: float = 0.0) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {t: [] for t in TOOLS}
    t_end = time.monotonic() + min_seconds
    rounds = 0
    while rounds < n or time.monotonic() < t_end:
        rounds += 1
        for tool in TOOLS:
            t0 = time.perf_counter()
            r = await c.call_tool(tool, {})
            lat[tool].append((time.perf_counter() - t0) * 1000)
            if r.is_error and tool != "get_job":
                raise RuntimeError(f"{tool}: {r.content[0].text}")
        await anyio.sleep(0.02)  # an agent polls; it does not hammer
    return lat


async def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench_server_"))
    ws = tmp / "ws"
    result: dict = {"python": platform.python_version(), "cpus": os.cpu_count(), "workspace": str(ws)}
    starts = await startup_times(ws, args.startups)
    result["startup_s"] = {"runs": [round(s, 3) for s in starts], "median": round(statistics.median(starts), 3)}
    async with Client(_params(ws), read_timeout_seconds=300) as c:
        r = await c.call_tool("patch_config", {"patch": BUSY})
        assert not r.is_error, r.content
        for tool in TOOLS:  # warm-up: first calls import torch and derive facts; not what we time
            await c.call_tool(tool, {})
        idle = await measure(c, args.requests)
        job = (await c.call_tool("train", {"steps": 100000})).structured_content
        job_id = job["job_id"]
        t0 = time.monotonic()
        while True:  # wait until the worker is really training (past imports and data loading)
            view = (await c.call_tool("get_job", {"job_id": job_id, "wait_s": 1})).structured_content
            if view["progress"]["update"] >= 1 or not view["active"] or time.monotonic() - t0 > 180:
                break
        before = view["progress"]["update"]
        busy = await measure(c, args.requests, args.seconds)
        view = (await c.call_tool("get_job", {"job_id": job_id})).structured_content
        after = view["progress"]["update"]
        await c.call_tool("cancel_job", {"job_id": job_id, "wait_s": 60})
    result["idle"] = {t: _stats(v) for t, v in idle.items()}
    result["training"] = {t: _stats(v) for t, v in busy.items()}
    result["training_job"] = {"updates_during_measurement": after - before, "status": view["status"],
                              "model": BUSY["model"], "batch_size": BUSY["train"]["batch_size"]}
    if not args.keep_workspace:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return result


def table(res: dict) -> str:
    lines = [f"Start-up to first tools/list (stdio, {len(res['startup_s']['runs'])} runs): median "
             f"{res['startup_s']['median']} s (runs {res['startup_s']['runs']})", "",
             "| tool | phase | n | p50 ms | p95 ms | max ms |", "| --- | --- | --- | --- | --- | --- |"]
    for phase in ("idle", "training"):
        for tool, s in res[phase].items():
            lines.append(f"| {tool} | {phase} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
    lines += ["", f"Updates the job trained during the 'training' measurement: "
                  f"{res['training_job']['updates_during_measurement']}"]
    return "\n".join(lines)


def summary(res: dict) -> str:
    busy = res["training"]
    return (f"first tools/list after {res['startup_s']['median']:.2f} s (median of {len(res['startup_s']['runs'])}); "
            "p50/p95 while a job trains: " + ", ".join(
                f"{t} {s['p50_ms']:.1f}/{s['p95_ms']:.1f} ms" for t, s in busy.items())
            + f" ({res['training_job']['updates_during_measurement']} updates trained meanwhile)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100, help="Rounds of the three calls per phase.")
    p.add_argument("--seconds", type=float, default=15.0, help="Minimum time measured while training.")
    p.add_argument("--startups", type=int, default=3)
    p.add_argument("--keep-workspace", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    res = anyio.run(run, args)
    res["summary"] = summary(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_server.json").write_text(json.dumps(res, indent=2) + "\n")
    md = table(res)
    (args.out / "bench_server.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
