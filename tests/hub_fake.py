"""A local stand-in for the Hugging Face Hub: the few endpoints huggingface_hub calls to push and pull a model.

``create_repo`` (POST /api/repos/create), ``upload_folder`` (POST /api/validate-yaml, .../preupload/{rev} answering
"regular" for every file so no LFS or xet transfer happens, .../commit/{rev} with the files inline as base64),
``model_info`` (GET /api/models/{repo}[/revision/{rev}]) and ``snapshot_download`` (.../tree/{rev}, HEAD/GET
/{repo}/resolve/{rev}/{file}).
Repos live in memory. Requests without ``Authorization: Bearer <token>`` for the server's token get 401, as the
Hub answers a missing or bad token; every request's headers and body are kept so a test can check what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

REPO = r"(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> path -> content
        self.commits: dict[str, str] = {}  # repo id -> head commit sha
        self.private: dict[str, bool] = {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, headers (lower case), body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, code: int, payload=None, *, raw: bytes | None = None, headers: dict | None = None,
                      head: bool = False) -> None:
                data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {hub.token}"

            def _handle(self, method: str) -> None:
                path = unquote(urlparse(self.path).path)
                body = self._body() if method in ("POST", "PUT") else b""
                hub.requests.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if not self._authorized():
                    self._send(401, {"error": "Invalid credentials in Authorization header"},
                               headers={"X-Error-Message": "Invalid credentials in Authorization header"})
                    return
                for pattern, fn in hub.routes:
                    m = re.fullmatch(pattern, path)
                    if m and (fn[0] == method or (method == "HEAD" and fn[0] == "GET")):
                        fn[1](self, m, body, method == "HEAD")
                        return
                self._send(404, {"error": f"fake hub: no route for {method} {path}"})

            def do_GET(self):
                self._handle("GET")

            def do_HEAD(self):
                self._handle("HEAD")

            def do_POST(self):
                self._handle("POST")

        return Handler

    # ---- endpoints ---------------------------------------------------------------------------------------------
    @property
    def routes(self):
        return [
            (r"/api/repos/create", ("POST", self._create)),
            (r"/api/validate-yaml", ("POST", lambda h, m, b, head: h._send(200, {"errors": [], "warnings": []}))),
            (rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", ("POST", self._preupload)),
            (rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", ("POST", self._commit)),
            (rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", ("GET", self._info)),
            (rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/.*)?", ("GET", self._tree)),
            (rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", ("GET", self._resolve)),
        ]

    def _create(self, h, m, body, head):
        req = json.loads(body)
        repo = f"{req.get('organization')}/{req['name']}"
        if repo in self.repos:
            h._send(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"})
            return
        self.repos[repo], self.private[repo] = {}, req.get("visibility") == "private"
        self.commits[repo] = hashlib.sha1(repo.encode()).hexdigest()
        h._send(200, {"url": f"{self.url}/{repo}", "name": repo, "id": repo})

    def _known(self, h, repo) -> bool:
        if repo not in self.repos:
            h._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
            return False
        return True

    def _preupload(self, h, m, body, head):
        if self._known(h, m["repo"]):
            files = json.loads(body)["files"]
            h._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                    for f in files], "commitOid": self.commits[m["repo"]]})

    def _commit(self, h, m, body, head):
        repo = m["repo"]
        if not self._known(h, repo):
            return
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                self.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        sha = hashlib.sha1(body).hexdigest()
        self.commits[repo] = sha
        h._send(200, {"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha, "success": True})

    def _info(self, h, m, body, head):
        repo = m["repo"]
        if self._known(h, repo):
            h._send(200, {"id": repo, "modelId": repo, "sha": self.commits[repo], "private": self.private[repo],
                          "siblings": [{"rfilename": p} for p in sorted(self.repos[repo])]})

    def _tree(self, h, m, body, head):
        repo = m["repo"]
        if self._known(h, repo):
            h._send(200, [{"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                          for p, c in sorted(self.repos[repo].items())])

    def _resolve(self, h, m, body, head):
        repo, name = m["repo"], m["file"]
        if not self._known(h, repo):
            return
        content = self.repos[repo].get(name)
        if content is None:
            h._send(404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"})
            return
        h._send(200, raw=content, head=head, headers={"X-Repo-Commit": self.commits[repo],
                                                      "ETag": f'"{hashlib.sha1(content).hexdigest()}"'})
