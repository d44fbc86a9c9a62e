"""Execute recipes against a BitTransformerLM MCP server, as an MCP client (exactly as an agent would).

``Runner(client, ...)`` works with any connected ``mcp.client.Client``: in-process (tests), stdio (the default:
``python -m mcp_server --workspace DIR`` as a subprocess) or streamable HTTP (``--url``, optional bearer token).
Training steps start a job and poll ``get_job(job_id, wait_s)`` (compact) until it ends, so no single call comes
near a client timeout, then fetch the detail the checks read once (``Step.fetch``); progress notifications and
each poll print one line on stderr.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TextIO

from mcp_server.budget import result_bytes, tools_bytes

from .detail import add_detail
from .expect import check, short
from .model import ResolvedRecipe, Step
from .recipes import POLL_S
from .report import CheckResult, RecipeResult, RunReport, StepResult

ACTIVE = ("queued", "starting", "running", "cancelling")


class ToolFailure(RuntimeError):
    """A tool call that returned is_error (or a transport error); the message is the server's."""


class Runner:
    def __init__(self, client: Any, *, scale: str = "smoke", overrides: set[str] | None = None,
                 poll_s: float = POLL_S, job_timeout_s: float | None = None, call_timeout_s: float = 600.0,
                 log: TextIO | None = None, server: str = "", workspace: str | None = None,
                 on_report: Callable[[RunReport], None] | None = None):
        self.client = client
        self.scale = scale
        self.overrides = {o.upper() for o in (overrides or set())}
        self.poll_s = poll_s
        self.job_timeout_s = job_timeout_s
        self.call_timeout_s = call_timeout_s
        self.out = log if log is not None else sys.stderr
        self.server = server
        self.workspace = workspace
        self.on_report = on_report  # called with the report before each recipe (current set) and after it
        self.tools: set[str] = set()
        self._last_progress = 0.0
        self._last_update: Any = None
        self.calls = 0  # tool calls made, and bytes of the results received (what an agent would read)
        self.bytes_in = 0
        self.tools_bytes = (0, 0)  # tools/list: all tools, model-visible tools

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ------------------------------------------------------------------------------------------------ calls
    async def call(self, tool: str, args: dict[str, Any], *, timeout: float | None = None,
                   progress: Callable | None = None) -> dict[str, Any]:
        """One tool call -> its structured result; raises ToolFailure with the server's message."""
        try:
            res = await self.client.call_tool(tool, args, read_timeout_seconds=timeout or self.call_timeout_s,
                                              progress_callback=progress)
        except Exception as err:  # transport errors, timeouts, protocol errors
            raise ToolFailure(f"{tool}: {type(err).__name__}: {err}") from err
        self.calls += 1
        self.bytes_in += result_bytes(res)
        text = " ".join(getattr(c, "text", "") for c in (res.content or []) if getattr(c, "text", None))
        if res.is_error:
            raise ToolFailure(text.strip() or f"{tool} failed without a message")
        if res.structured_content is not None:
            data = res.structured_content
            # A tool returning a non-object is wrapped as {"result": ...} by the SDK.
            return data if isinstance(data, dict) else {"result": data}
        try:
            return json.loads(text)
        except ValueError:
            return {"text": text}

    def _job_line(self, text: str, update: Any) -> None:
        """A job progress line: at most one per 5 s, and only when the update changed (or each minute)."""
        now = time.monotonic()
        if now - self._last_progress < 5.0 or (update == self._last_update and now - self._last_progress < 60.0):
            return
        self._last_progress, self._last_update = now, update
        self.say(" " * 13 + text)

    async def _progress(self, progress: float, total: float | None, message: str | None) -> None:
        self._job_line(message or f"{progress:g}/{total or '?'}", progress)

    async def wait_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """Poll get_job until the job ends (cancels it past job_timeout_s)."""
        job_id = job["job_id"]
        plan = job.get("plan") or {}
        self.say(f"{'':13}{job_id} {job.get('status')}"
                 + (f" (plan: {plan['total_updates']} updates, {plan.get('precision')})" if plan else ""))
        start = time.monotonic()
        while job.get("active", job.get("status") in ACTIVE):
            if self.job_timeout_s and time.monotonic() - start > self.job_timeout_s:
                await self.stop_job(job_id)
                raise ToolFailure(f"{job_id} did not finish within {self.job_timeout_s:.0f} s (stuck at update "
                                  f"{(job.get('progress') or {}).get('update', '?')}); cancelled it")
            job = await self.call("get_job", {"job_id": job_id, "wait_s": self.poll_s},
                                  timeout=self.poll_s + 120, progress=self._progress)
            p = job.get("progress") or {}
            loss = p.get("last_loss")
            eta = p.get("eta_s")
            line = (f"{job_id} {job['status']} update {p.get('update', 0)}/{p.get('total_updates') or '?'}"
                    + (f" loss {short(loss)}" if loss is not None else "")
                    + (f" eta {eta:.0f}s" if isinstance(eta, int | float) and job.get("active") else ""))
            if job.get("active"):
                self._job_line(line, float(p.get("update") or 0))
            else:
                self.say(" " * 13 + line)
        if job.get("status") != "completed" and job.get("reason"):
            self.say(f"{'':13}{job_id} ended {job['status']}: {job['reason']}")
        return job

    async def stop_job(self, job_id: str) -> None:
        """Cancel at a step boundary; a worker that does not stop (e.g. hung) is killed, so later jobs can run."""
        view: dict[str, Any] = {}
        with contextlib.suppress(ToolFailure):
            view = await self.call("cancel_job", {"job_id": job_id, "wait_s": 30}, timeout=90)
        if view.get("active", True):
            with contextlib.suppress(ToolFailure):
                await self.call("cancel_job", {"job_id": job_id, "wait_s": 15, "force": True}, timeout=60)

    # ------------------------------------------------------------------------------------------------ recipes
    async def run_step(self, step: Step, results: dict[str, Any]) -> StepResult:
        calls, seen = self.calls, self.bytes_in
        out = await self._run_step(step, results)
        out.calls, out.result_bytes = self.calls - calls, self.bytes_in - seen
        return out

    async def _run_step(self, step: Step, results: dict[str, Any]) -> StepResult:
        t0 = time.monotonic()
        out = StepResult(id=step.id, tool=step.tool, args=step.args, status="ok")
        try:
            if step.tool not in self.tools:
                raise ToolFailure(f"the server has no tool {step.tool!r} (it has: {', '.join(sorted(self.tools))})")
            args = dict(step.args)
            if step.wait:
                args.setdefault("wait_s", 0)
            result = await self.call(step.tool, args, progress=self._progress)
            if step.wait:
                out.job_id = result.get("job_id")
                result = await self.wait_job(result)
                if step.fetch:  # polls are compact; one call for the detail the checks read
                    result = await self.call("get_job", {"job_id": out.job_id, **step.fetch})
                if result.get("status") != "completed":
                    out.job_end = f"{out.job_id} {result.get('status')}: {result.get('reason') or 'no reason given'}"
        except ToolFailure as err:
            out.elapsed_s = round(time.monotonic() - t0, 2)
            if step.expect_error is not None:
                ok = re.search(step.expect_error, str(err)) is not None
                out.status = "ok" if ok else "failed"
                out.checks.append(CheckResult(step=step.id, path="error", op="matches", expected=step.expect_error,
                                              measured=str(err)[:300], ok=ok, detail="" if ok else str(err)[:300]))
                return out
            out.status, out.error = "error", str(err)
            return out
        results[step.id] = result
        if step.expect_error is not None:
            out.checks.append(CheckResult(step=step.id, path="error", op="matches", expected=step.expect_error,
                                          measured="no error", ok=False, detail="the call was expected to fail"))
        for e in step.expect:
            o = check(e, result, results)
            out.checks.append(CheckResult(step=step.id, path=e.path, op=e.op, expected=o.expected,
                                          measured=o.measured, ok=o.ok, detail=o.detail, why=e.why, fix=e.fix,
                                          key=e.key, precondition=step.precondition))
        if not all(c.ok for c in out.checks):
            out.status = "refused" if step.precondition else "failed"
        out.elapsed_s = round(time.monotonic() - t0, 2)
        return out

    async def run_recipe(self, recipe: ResolvedRecipe, index: int = 0, total: int = 0) -> RecipeResult:
        t0 = time.monotonic()
        override = recipe.override or ("--override on the command line" if recipe.id.upper() in self.overrides
                                       else None)
        self.say((f"[{index}/{total}] " if total else "") + f"task {recipe.id}: {recipe.title}")
        rr = RecipeResult(id=recipe.id, phase=recipe.phase, title=recipe.title, status="passed")
        add_detail(recipe.steps)  # idempotent: resolved recipes already carry it, hand-built ones get it here
        results: dict[str, Any] = {}
        for step in recipe.steps:
            sr = await self.run_step(step, results)
            rr.steps.append(sr)
            n_ok = sum(c.ok for c in sr.checks)
            tag = sr.status if sr.status != "ok" else "ok"
            if sr.status == "refused" and override:
                sr.status = tag = "overridden"
                rr.override = override
            self.say(f"  {step.id:<13} {step.tool:<17} {tag} {n_ok}/{len(sr.checks)} ({sr.elapsed_s:.1f}s)"
                     + (f": {sr.error[:300]}" if sr.error else ""))
            for c in sr.checks:
                if not c.ok:
                    self.say(f"{'':13}{'precondition' if c.precondition else 'FAILED'}: {c.detail}"
                             + (f" -> {c.fix}" if c.fix else ""))
            if sr.status == "error":
                rr.status, rr.reason = "error", f"step {step.id} ({step.tool}): {sr.error}"
                break
            if sr.status == "refused":
                fixes = "; ".join(f"{c.detail}" + (f" (fix: {c.fix})" if c.fix else "") for c in sr.checks if not c.ok)
                rr.status, rr.reason = "refused", f"precondition not met: {fixes}"
                break
            if sr.status == "failed" and rr.status == "passed":
                rr.status = "failed"
                details = [c.detail for c in sr.checks if not c.ok]
                rr.reason = "; ".join(([sr.job_end] if sr.job_end else []) + details)[:500]
        done = {s.id for s in rr.steps}
        rr.steps += [StepResult(id=s.id, tool=s.tool, args=s.args, status="skipped") for s in recipe.steps
                     if s.id not in done]
        rr.elapsed_s = round(time.monotonic() - t0, 2)
        rr.account(self.tools_bytes[1])
        self.say(f"  => {rr.status.upper()}" + (f" (override: {rr.override})" if rr.override else "")
                 + f" in {rr.elapsed_s:.1f}s ({rr.calls} calls, {rr.result_bytes} result bytes)")
        return rr

    async def run(self, recipes: list[ResolvedRecipe]) -> RunReport:
        t0 = time.monotonic()
        report = RunReport(scale=self.scale, server=self.server, workspace=self.workspace, started_at=time.time(),
                           planned=[r.id for r in recipes])
        listed = await self.client.list_tools()
        self.tools = {t.name for t in listed.tools}
        self.tools_bytes = tools_bytes(list(listed.tools))
        report.tools_count = len(listed.tools)
        report.tools_list_bytes, report.tools_list_bytes_model = self.tools_bytes
        for i, recipe in enumerate(recipes, 1):
            report.current = recipe.id
            self._report(report)
            report.recipes.append(await self.run_recipe(recipe, i, len(recipes)))
        return report.finish(time.monotonic() - t0)

    def _report(self, report: RunReport) -> None:
        if self.on_report is not None:
            try:
                self.on_report(report)
            except OSError as err:  # a progress file is a courtesy: never stop the run on it
                self.say(f"could not write the progress report: {err}")


# ------------------------------------------------------------------------------------------------ transports
def stdio_params(server_cmd: list[str] | None, workspace: str | Path, env: dict[str, str] | None = None):
    """StdioServerParameters for ``server_cmd`` (default: this Python's ``-m mcp_server --workspace DIR``)."""
    import os

    from mcp.client.stdio import StdioServerParameters

    cmd = list(server_cmd) if server_cmd else [sys.executable, "-m", "mcp_server", "--workspace", str(workspace)]
    # The whole environment (PYTHONPATH, HF caches, CUDA settings...), not the SDK's minimal default.
    return StdioServerParameters(command=cmd[0], args=cmd[1:], env={**os.environ, **(env or {})})


@contextlib.asynccontextmanager
async def stdio_transport(params, errlog: TextIO) -> AsyncIterator[Any]:
    from mcp.client.stdio import stdio_client

    async with stdio_client(params, errlog=errlog) as streams:
        yield streams


@contextlib.asynccontextmanager
async def http_transport(url: str, token: str | None = None) -> AsyncIterator[Any]:
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http, streamable_http_client(url, http_client=http) as s:
        yield s
