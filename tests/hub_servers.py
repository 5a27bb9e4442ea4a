"""Hub servers on 127.0.0.1 for the publishing and loading tests.

`olah_hub`: the real `olah` Hugging Face Hub mirror (PyPI), in offline mode, serving local git repositories from
its mirrors path over the Hub's HTTP protocol. `snapshot_download`, `hf_hub_download` and `from_pretrained` talk to
it exactly as to huggingface.co; it refuses writes, so it serves what a test publishes with `olah_hub.publish`.

`hub_endpoint`: points huggingface_hub (and so transformers) at such a server for one test, online, with an empty
cache, the way `HF_ENDPOINT=http://127.0.0.1:PORT` would for a user.
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
