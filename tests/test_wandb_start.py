"""W&B never prompts or hangs (issue 29): `logger.wandb=true` with no credentials and no
network, WANDB_MODE unset, in a terminal (a pseudo-terminal on stdin and stderr, where W&B
would ask "Enter your choice:") trains offline and says so with the `wandb sync` command;
a server that does not answer within the bound, or an online start that fails, falls back
the same way."""
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from distca.observe import wandb_start

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once closed: connections are refused


def _in_a_terminal(cmd, env, cwd, timeout):
    """Run cmd with a pseudo-terminal as stdin, stdout and stderr; (exit code, output, seconds).
    A process still running at `timeout` (waiting at a prompt) is killed: exit code None."""
    master, slave = pty.openpty()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        while time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: every writer exited
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    finally:
        os.close(master)
    return rc, out.decode(errors="replace"), time.monotonic() - t0


@pytest.mark.slow
def test_no_credentials_no_network_in_a_terminal_trains_offline(tmp_path):
    pytest.importorskip("wandb")
    home = tmp_path / "home"  # no netrc, no W&B settings: no credentials anywhere
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    url = f"http://127.0.0.1:{_closed_port()}"
    env.update(HOME=str(home), WANDB_BASE_URL=url, TERM="xterm", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    run = tmp_path / "run"
    rc, out, took = _in_a_terminal(
        [sys.executable, "-m", "distca.train", "experiment=tiny", "data.seq_len=64", "train.steps=2",
         "logger.wandb=true", "logger.progress=false", f"run_dir={run}"], env, tmp_path, timeout=180)
    assert rc == 0 and took < 180, (rc, took, out[-4000:])
    assert "Enter your choice" not in out and "Traceback" not in out, out[-4000:]
    banner = next(line for line in out.splitlines() if line.strip().startswith("W&B"))
    assert f"offline (the W&B server {url} did not answer" in banner, banner
    sync = banner.split("upload later with: wandb sync ")[1].strip()
    assert Path(run / "wandb") in Path(sync).parents and Path(sync).is_dir(), banner
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


class _FakeWandb:
    """wandb's surface that start_wandb uses: login(prompt=False), init(mode=...), Settings."""

    def __init__(self, logged_in=True, online_fails=False):
        self.logged_in, self.online_fails, self.modes = logged_in, online_fails, []
        self.Settings = lambda **kw: kw

    def login(self, prompt=True):
        assert prompt is False  # never the interactive prompt
        return self.logged_in

    def init(self, mode, dir, **kw):
        self.modes.append(mode)
        if mode == "online" and self.online_fails:
            raise RuntimeError("Run initialization has timed out after 60.0 sec.\nmore text")
        return SimpleNamespace(dir=f"{dir}/wandb/{mode}-run-1/files", url="https://example.test/run")


def _start(monkeypatch, fake, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    lcfg = SimpleNamespace(project="p", entity=None, name=None, mode="online")
    return wandb_start.start_wandb(lcfg, str(tmp_path), {}, warn=print)


def test_a_server_that_does_not_answer_in_time_means_offline(tmp_path, monkeypatch):
    silent = socket.socket()  # accepts connections (the kernel does), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(wandb_start, "REACH_TIMEOUT_S", 1.0)
    fake = _FakeWandb(logged_in=True)
    t0 = time.monotonic()
    try:
        started = _start(monkeypatch, fake, tmp_path)
    finally:
        silent.close()
    assert time.monotonic() - t0 < 10 and fake.modes == ["offline"]
    assert "did not answer (timed out)" in started.where
    assert started.where.endswith(f"wandb sync {tmp_path}/wandb/offline-run-1")


def test_no_credentials_or_a_failed_online_start_mean_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(wandb_start, "unreachable", lambda url: None)  # a server that answers
    fake = _FakeWandb(logged_in=False)
    started = _start(monkeypatch, fake, tmp_path)
    assert fake.modes == ["offline"] and "no W&B credentials: set WANDB_API_KEY or run `wandb login`" in started.where
    fake = _FakeWandb(online_fails=True)
    started = _start(monkeypatch, fake, tmp_path)
    assert fake.modes == ["online", "offline"]
    assert "(the online start failed: Run initialization has timed out after 60.0 sec.)" in started.where
    fake = _FakeWandb()
    assert _start(monkeypatch, fake, tmp_path).where == "https://example.test/run" and fake.modes == ["online"]


def test_the_reachability_probe(monkeypatch):
    monkeypatch.setattr(wandb_start, "REACH_TIMEOUT_S", 5.0)
    assert "refused" in wandb_start.unreachable(f"http://127.0.0.1:{_closed_port()}")
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert wandb_start.unreachable(f"http://127.0.0.1:{server.server_port}") is None  # any answer is one
    finally:
        server.shutdown()
