"""Property test: random and malformed arguments at every tool never crash the server or leak a traceback."""

from __future__ import annotations

import json

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.client import Client

from mcp_server.jobs import JobBusyError

from .conftest import TINY, new_server, tiny_workspace

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    ws = tmp_path_factory.mktemp("fuzz") / "ws"
    anyio.run(tiny_workspace, ws)
    server = new_server(ws)
    app = server.app_state

    def no_jobs(request, **_):  # random valid train() calls must not start real jobs here
        raise JobBusyError("fuzz-job")

    app.jobs.start = no_jobs
    tiny = app.config()
    with anyio.from_thread.start_blocking_portal(backend="asyncio") as portal, \
            portal.wrap_async_context_manager(Client(server)) as client:
        tools = {t.name: t for t in portal.call(client.list_tools).tools}
        yield portal, client, app, tools, tiny


TOOLS = ["get_config", "patch_config", "prepare_data", "train", "get_job", "list_jobs", "cancel_job", "evaluate",
         "generate", "export_int8", "scale_up", "list_checkpoints", "load_checkpoint", "telemetry",
         "inspect_attention", "playbook_list", "playbook_step"]


@pytest.mark.parametrize("tool", TOOLS)
def test_random_arguments_never_break_the_server(fuzz, tool):
    portal, client, app, tools, tiny = fuzz
    props = list(tools[tool].input_schema.get("properties", {}))
    keys = st.sampled_from(props) | st.text(max_size=10) if props else st.text(max_size=10)

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(args=st.dictionaries(keys, JSON, max_size=5))
    def check(args):
        app.save_config(tiny)  # a random valid patch must not grow the model for the next example
        try:
            json.dumps(args, allow_nan=True)
        except (TypeError, ValueError):
            return
        result = portal.call(client.call_tool, tool, args)
        text = " ".join(getattr(c, "text", "") for c in result.content)
        assert "Traceback" not in text
        if result.is_error:
            assert text.strip(), "an error needs a message"
        ping = portal.call(client.call_tool, "list_jobs", {})
        assert not ping.is_error

    check()
    assert TINY["model"]["d_model"] == app.config().model.d_model
