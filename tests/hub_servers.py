"""Hub servers on 127.0.0.1 for the publishing and loading tests.

`olah_hub`: the real `olah` Hugging Face Hub mirror (PyPI), in offline mode, serving local git repositories from
its mirrors path over the Hub's HTTP protocol. `snapshot_download`, `hf_hub_download` and `from_pretrained` talk to
it exactly as to huggingface.co; it refuses writes, so it serves what a test publishes with `olah_hub.publish`.

`hub_endpoint`: points huggingface_hub (and so transformers) at such a server for one test, online, with an empty
cache, the way `HF_ENDPOINT=http://127.0.0.1:PORT` would for a user.

`empty_hub_cache`: no server, an empty cache: offline, Hub ids resolve only against what a test puts there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before serving {url}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (404 for an unknown repo is an answer)
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} after {timeout} s")


@dataclass
class OlahHub:
    endpoint: str
    mirrors: Path

    def publish(self, repo_id: str, directory: Path, branch: str = "main") -> str:
        """Serve the files of `directory` as model repo `repo_id` (one git commit on `branch`); returns its sha."""
        repo = self.mirrors / "models" / repo_id
        if repo.exists():
            shutil.rmtree(repo)
        shutil.copytree(directory, repo)
        git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com"]
        subprocess.run([*git, "init", "-q", "-b", branch], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", f"publish {repo_id}"], check=True)
        return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()


@pytest.fixture(scope="session")
def olah_hub(tmp_path_factory):
    """A real olah server on a free port of 127.0.0.1, offline, serving git repositories under its mirrors path."""
    root = tmp_path_factory.mktemp("olah")
    mirrors = root / "mirrors"
    (mirrors / "models").mkdir(parents=True)
    port = free_port()
    config = root / "olah.toml"
    config.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "cache"}"\n'
                      f'mirrors-path = ["{mirrors}"]\n\n[accessibility]\noffline = true\n')
    log = open(root / "olah.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", str(config)], cwd=root, stdout=log,
                               stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{endpoint}/api/models/none/none/revision/main", process)
        yield OlahHub(endpoint, mirrors)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so Hub ids resolve only against what a test puts there."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def put_in_hub_cache(cache: Path, repo_id: str, directory: Path, revision: str = "main") -> None:
    """Lay `directory` out as huggingface_hub's cache does after downloading `repo_id` at `revision`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(directory, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(commit)


def point_hub_at(monkeypatch, endpoint: str, cache: Path) -> None:
    """What HF_ENDPOINT=<endpoint>, HF_HUB_CACHE=<cache> and no offline flag do, for the running process."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def hub_endpoint(olah_hub, monkeypatch, tmp_path) -> OlahHub:
    point_hub_at(monkeypatch, olah_hub.endpoint, tmp_path / "hub-cache")
    return olah_hub


# --- a writable stand-in -------------------------------------------------------------------------------------------

class HubWriteStandIn:
    """A local HTTP endpoint answering only the calls `push_to_hub` makes (create_repo, create_branch,
    validate-yaml, preupload, commit), storing what it receives. It is NOT the Hub — no writable Hub server can run
    here (olah refuses every write) — and it stays minimal on purpose: every file is declared a "regular" (inline)
    upload.

    Only the real Hub can confirm: that the token is accepted and may write to the namespace; LFS / Xet upload of
    large files (the real Hub sends model.safetensors through LFS or Xet, never inline); that the card's YAML
    metadata passes the Hub's own schema (the stand-in only checks that it is a YAML mapping); that private
    repositories are really hidden; and branch semantics beyond "created, then committed to".
    """

    def __init__(self):
        import threading
        from http.server import ThreadingHTTPServer

        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self.unhandled: list[tuple[str, str]] = []
        self.validated_cards: list[str] = []
        self.refuse_with: int | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]

    def write_out(self, repo_id: str, directory: Path, branch: str = "main") -> Path:
        for name, content in self.files(repo_id, branch).items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(content)
        return directory

    def _handler_class(self):
        import base64
        import json
        import re
        from http.server import BaseHTTPRequestHandler

        import yaml

        stand_in = self
        repo_route = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>preupload|commit|branch)/(?P<rev>.+)$")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                """Quiet."""

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                stand_in.unhandled.append(("GET", self.path))
                self._reply(404, {"error": "not served by the stand-in"})

            def do_POST(self):
                from urllib.parse import unquote

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = unquote(self.path.split("?")[0])
                stand_in.requests.append(("POST", path))
                stand_in.authorizations.append(self.headers.get("Authorization"))
                if stand_in.refuse_with:
                    return self._reply(stand_in.refuse_with, {"error": "Invalid credentials in Authorization header"})
                if path == "/api/validate-yaml":  # the card's metadata: here only "is it a YAML mapping"
                    card = json.loads(body)["content"]
                    stand_in.validated_cards.append(card)
                    try:
                        valid = isinstance(yaml.safe_load(card.split("---")[1]), dict)
                    except (yaml.YAMLError, IndexError):
                        valid = False
                    return self._reply(200 if valid else 400, {"errors": [] if valid else [
                        {"message": "metadata is not a YAML mapping"}], "warnings": []})
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    if repo_id in stand_in.repos:
                        return self._reply(409, {"error": "You already created this model repo",
                                                 "url": f"{stand_in.endpoint}/{repo_id}"})
                    stand_in.repos[repo_id] = {"visibility": data.get("visibility", "public"), "branches": {"main": {}},
                                               "commits": []}
                    return self._reply(200, {"url": f"{stand_in.endpoint}/{repo_id}", "name": repo_id})
                match = repo_route.match(path)
                if not match or match["repo"] not in stand_in.repos:
                    stand_in.unhandled.append(("POST", path))
                    return self._reply(404, {"error": "not served by the stand-in"})
                repo = stand_in.repos[match["repo"]]
                if match["action"] == "branch":
                    if match["rev"] in repo["branches"]:
                        return self._reply(409, {"error": "branch exists"})
                    repo["branches"][match["rev"]] = dict(repo["branches"]["main"])
                    return self._reply(200, {})
                if match["action"] == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                branch = repo["branches"].setdefault(match["rev"], {})
                for line in lines:
                    if line["key"] == "file":
                        branch[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                repo["commits"].append({"branch": match["rev"], "summary": header.get("summary")})
                oid = f"{len(repo['commits']):040x}"
                return self._reply(200, {"commitUrl": f"{stand_in.endpoint}/{match['repo']}/commit/{oid}",
                                         "commitOid": oid, "success": True})

        return Handler


@pytest.fixture
def writable_hub(monkeypatch, tmp_path):
    """The stand-in above, with huggingface_hub pointed at it and a (fake) token in HF_TOKEN."""
    stand_in = HubWriteStandIn()
    point_hub_at(monkeypatch, stand_in.endpoint, tmp_path / "hub-cache")
    monkeypatch.setenv("HF_TOKEN", "hf_standin_secret_token_value")
    yield stand_in
    stand_in.close()
