"""``python -m playbook run|list|show|prompt``: run the playbook against the MCP server, or read it.

    python -m playbook run --scale smoke              # the whole playbook on a fresh temporary workspace
    python -m playbook run --phase 1                  # Phase 1 checks only
    python -m playbook run --task 6 --task 10         # chosen tasks
    python -m playbook run --url http://127.0.0.1:8000/mcp --token SECRET   # a server that is already running
    python -m playbook list                           # the recipes, in order
    python -m playbook show C --scale full            # one recipe as JSON
    python -m playbook prompt phase-1                 # the agent prompt for a task id, phase-1, phase-2 or all
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bit_transformer.cli_flags import SPELLING_NOTE, FlagHelp, FlagParser, spell

from .recipes import UnknownTask, list_recipes, resolve, select


class _Help(FlagHelp, argparse.RawDescriptionHelpFormatter):
    """One spelling per flag; the epilog's examples keep their lines."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(prog="python -m playbook", description=__doc__.splitlines()[0], formatter_class=_Help,
                   epilog=__doc__ + "\n" + SPELLING_NOTE)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute recipes through the MCP server and print a pass/fail table")
    r.add_argument(*spell("--phase"), type=int, choices=(1, 2), help="only this phase")
    r.add_argument(*spell("--task"), action="append", help="only this task id (repeatable), e.g. 1, 12, A")
    r.add_argument(*spell("--scale"), choices=("smoke", "full"), default="smoke",
                   help="smoke: CPU-sized, minutes (default); full: the real run")
    r.add_argument(*spell("--server-cmd"), help="command that starts the server over stdio (default: "
                   "'<python> -m mcp_server --workspace <workspace>')")
    r.add_argument(*spell("--url"), help="connect to a running server over streamable HTTP instead, e.g. "
                   "http://127.0.0.1:8000/mcp")
    r.add_argument(*spell("--token"), help="bearer token for --url")
    r.add_argument(*spell("--workspace"), help="server workspace (default: a fresh temporary directory, removed "
                   "after a green run)")
    r.add_argument(*spell("--report"), default="playbook-report.json", help="JSON report path (default %(default)s)")
    r.add_argument(*spell("--override"), action="append", default=[], metavar="ID",
                   help="run this task even if its precondition fails (repeatable), e.g. --override C")
    r.add_argument(*spell("--poll-s"), type=float, default=50.0, help="get_job wait_s per poll (default "
                   "%(default)s; the call returns as soon as the job ends)")
    r.add_argument(*spell("--job-timeout"), type=float, default=None,
                   help="cancel a job that runs longer (seconds; default: 300 at smoke, none at full)")
    r.add_argument(*spell("--threads"), type=int, default=None,
                   help="torch/OpenMP threads of the stdio server and its training workers (OMP_NUM_THREADS); "
                   "default: 1 at smoke (tiny models lose to thread contention on small CPUs), torch's default at "
                   "full; ignored with --url")
    r.add_argument(*spell("--verbose"), "-v", action="store_true", help="show every check in the table")
    for name, text in (("list", "list the recipes"), ("show", "show one recipe as JSON"),
                       ("prompt", "print the agent prompt for a task id, phase-1, phase-2 or all")):
        s = sub.add_parser(name, help=text)
        if name != "list":
            s.add_argument("target")
        s.add_argument(*spell("--scale"), choices=("smoke", "full"), default="smoke")
    return p.parse_args(argv)


async def run_async(args: argparse.Namespace) -> tuple[object, Path | None, Path | None]:
    """(report, temp dir or None, server log or None)."""
    from mcp.client import Client

    from .runner import Runner, http_transport, stdio_params, stdio_transport

    recipes = select(phase=args.phase, task=args.task, scale=args.scale)
    timeout = args.job_timeout if args.job_timeout is not None else (300.0 if args.scale == "smoke" else None)
    tmp = None
    if args.url:
        target, server, workspace, log_path = http_transport(args.url, args.token), args.url, None, None
        errlog = None
    else:
        if args.workspace:
            ws = Path(args.workspace).resolve()
            ws.mkdir(parents=True, exist_ok=True)
            log_path = ws / "playbook-server.log"
        else:
            tmp = Path(tempfile.mkdtemp(prefix="bt-playbook-"))
            ws, log_path = tmp / "workspace", tmp / "server.log"
        threads = args.threads
        if threads is None and args.scale == "smoke" and "OMP_NUM_THREADS" not in os.environ:
            threads = 1
        env = {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                                          "BT_TORCH_THREADS": str(threads)}
        params = stdio_params(shlex.split(args.server_cmd) if args.server_cmd else None, ws, env)
        errlog = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below; the server's stderr
        target, server, workspace = stdio_transport(params, errlog), " ".join([params.command, *params.args]), str(ws)
    try:
        async with Client(target) as client:
            runner = Runner(client, scale=args.scale, overrides=set(args.override), poll_s=args.poll_s,
                            job_timeout_s=timeout, server=server, workspace=workspace,
                            on_report=lambda r: r.write(args.report))  # progress: the recipes so far
            runner.say(f"playbook: {len(recipes)} recipes at scale {args.scale} via {server}")
            return await runner.run(recipes), tmp, log_path
    finally:
        if errlog is not None:
            errlog.close()


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from .report import exit_code, table

    t0 = time.monotonic()
    try:
        report, tmp, log_path = anyio.run(run_async, args)
    except UnknownTask as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the server did not start or the connection broke
        print(f"error: could not run the playbook: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(table(report, verbose=args.verbose))
    path = report.write(args.report)
    code = exit_code(report)
    print(f"report: {path}  (wall {time.monotonic() - t0:.1f} s)")
    if tmp is not None:
        if code == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"workspace and server log kept for inspection: {tmp}", file=sys.stderr)
    elif log_path is not None and code != 0:
        print(f"server log: {log_path}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.cmd == "run":
            return cmd_run(args)
        if args.cmd == "list":
            for s in list_recipes(args.scale):
                print(f"{s.id:>3}  phase {s.phase}  {s.title}  [{', '.join(s.tools)}]")
            return 0
        if args.cmd == "show":
            print(json.dumps(resolve(args.target, args.scale).model_dump(mode="json"), indent=2))
            return 0
        from .prompts import render_prompt

        print(render_prompt(args.target, args.scale))
        return 0
    except UnknownTask as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
