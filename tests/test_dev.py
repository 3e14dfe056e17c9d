"""The dev supervisor: restarts what dies, stops everything, and runs the real stack."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from imagepipe.config import Settings
from imagepipe.stack.dev import role_settings
from imagepipe.stack.net import local_host
from imagepipe.stack.roles import role_argv, role_commands, role_env
from imagepipe.stack.supervisor import Supervisor
from tests import images
from tests.conftest import CALLBACK_SECRET, free_port
from tests.owners import GRANT_SECRET

REPO = Path(__file__).resolve().parent.parent
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait_for(condition: Callable[[], object], timeout: float, step: float = 0.05) -> None:
    """Poll `condition` until it is truthy or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s")
        time.sleep(step)


def alive(pid: int) -> bool:
    """Whether a process (not a zombie) with this pid exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    """Three sleeping children with a fast restart; always stopped at the end."""
    sup = Supervisor({"a": SLEEPER, "b": SLEEPER, "c": SLEEPER}, backoff_s=0.05)
    sup.start()
    yield sup
    sup.stop()


def test_starts_every_child(supervisor: Supervisor) -> None:
    pids = supervisor.pids()
    assert sorted(pids) == ["a", "b", "c"]
    assert all(alive(pid) for pid in pids.values())


def test_restarts_a_child_killed_from_outside(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    before = supervisor.pids()
    os.kill(before["b"], signal.SIGKILL)

    def restarted() -> bool:
        supervisor.poll()
        return supervisor.pids().get("b", before["b"]) != before["b"]

    with caplog.at_level(logging.WARNING, "imagepipe.stack.supervisor"):
        wait_for(restarted, timeout=5)
    assert supervisor.pids()["a"] == before["a"]
    assert supervisor.children["b"].crashes == 1
    assert caplog.messages[0].startswith("b failed (killed by SIGKILL) after ")


def test_stop_leaves_no_process_alive(supervisor: Supervisor) -> None:
    pids = supervisor.pids()
    supervisor.stop()
    assert not any(alive(pid) for pid in pids.values())
    supervisor.poll()
    assert supervisor.pids() == {}


def test_stop_kills_a_child_that_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = (
        "import pathlib, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(ready)!r}).write_text(str(kid.pid))\n"
        "time.sleep(60)\n"
    )
    sup = Supervisor({"stubborn": [sys.executable, "-c", stubborn]}, stop_timeout_s=0.5)
    sup.start()
    wait_for(ready.exists, timeout=10)
    pid, grandchild = sup.pids()["stubborn"], int(ready.read_text())
    started = time.monotonic()
    sup.stop()
    assert time.monotonic() - started < 5
    assert not alive(pid)
    wait_for(lambda: not alive(grandchild), timeout=5)


def test_role_commands_run_this_python() -> None:
    commands = role_commands("0.0.0.0", 8123)
    assert commands["api"][:3] == [sys.executable, "-m", "imagepipe"]
    assert commands["api"][3:] == ["api", "--host", "0.0.0.0", "--port", "8123"]
    assert commands["worker"][3:] == ["worker"]
    assert commands["replicator"][3:] == ["replicator"]


def test_role_env_points_roles_at_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEPIPE_CALLBACK_URL", raising=False)
    settings = Settings(
        environment="development",  # as `imagepipe dev` builds them
        data_dir=tmp_path / "data",
        redis_url="redis://127.0.0.1:1/0",
        backup_s3_endpoint="http://127.0.0.1:2",
    )
    env = role_env(role_settings(settings, "0.0.0.0", 8123), base={"KEEP": "me"})
    assert env["KEEP"] == "me"
    assert env["IMAGEPIPE_ENVIRONMENT"] == "development"
    assert env["IMAGEPIPE_REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert env["IMAGEPIPE_BACKUP_S3_ENDPOINT"] == "http://127.0.0.1:2"
    assert env["IMAGEPIPE_DATA_DIR"] == str((tmp_path / "data").resolve())
    assert env["IMAGEPIPE_CALLBACK_URL"] == "http://127.0.0.1:8123/internal/callbacks"
    assert env["AWS_ACCESS_KEY_ID"] == settings.s3_access_key_id


def test_role_env_keeps_a_callback_url_the_user_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEPIPE_CALLBACK_URL", "http://elsewhere/cb")
    settings = Settings(environment="development", data_dir=tmp_path)
    env = role_env(role_settings(settings, "127.0.0.1", 1), base={})
    assert env["IMAGEPIPE_CALLBACK_URL"] == "http://elsewhere/cb"


def test_role_settings_call_back_on_the_apis_callback_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEPIPE_CALLBACK_URL", raising=False)
    settings = Settings(environment="development", data_dir=tmp_path, callback_port=8124)
    url = role_settings(settings, "0.0.0.0", 8123).callback_url
    assert url == "http://127.0.0.1:8124/internal/callbacks"


def test_role_env_reproduces_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        data_dir=tmp_path,
        redis_url="redis://127.0.0.1:1/0",
        backup_s3_endpoint="http://127.0.0.1:2",
        backup_s3_bucket="backup-here",
        primary_s3_endpoint="http://127.0.0.1:3",
        primary_s3_bucket="primary-here",
        AWS_ACCESS_KEY_ID="key-id",
        AWS_SECRET_ACCESS_KEY="key-secret",
        callback_url="http://127.0.0.1:4/internal/callbacks",
        callback_secret=CALLBACK_SECRET,
        grant_secret=GRANT_SECRET,
        callback_previous_secret="previous-callback-secret-of-32-characters",
        callback_host="10.0.0.2",
        callback_port=8001,
        worker_concurrency=3,
    )
    for name in [n for n in os.environ if n.startswith(("IMAGEPIPE_", "AWS_"))]:
        monkeypatch.delenv(name)
    for name, value in role_env(settings, base={}).items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


@pytest.mark.parametrize(
    ("host", "local"), [("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("::1", "[::1]")]
)
def test_local_host(host: str, local: str) -> None:
    assert local_host(host) == local


# -- end to end: the real `imagepipe dev` ------------------------------------------------


def stack_processes(data_dir: Path) -> dict[int, str]:
    """Pid → command line of each process whose argv, environment or cwd mentions `data_dir`.

    The cwd catches Valkey, which overwrites its argv with its proctitle.
    """
    needle = str(data_dir).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd").encode()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in argv + environ + cwd and alive(int(entry.name)):
            found[int(entry.name)] = argv.replace(b"\0", b" ").decode()
    return found


def answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def assert_roles_got_the_data_dirs_own_secrets(data_dir: Path) -> None:
    """`imagepipe dev` made its secrets file (owner-only) and handed them to its roles through
    their environment, never on a command line anyone can read."""
    path = data_dir / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    made = json.loads(path.read_text())
    processes = stack_processes(data_dir)
    assert not [s for s in made.values() if s in " ".join(processes.values())]
    api = next(pid for pid, argv in processes.items() if "imagepipe api" in argv)
    environ = Path(f"/proc/{api}/environ").read_bytes().split(b"\0")
    assert f"IMAGEPIPE_CALLBACK_SECRET={made['callback_secret']}".encode() in environ
    assert b"IMAGEPIPE_ENVIRONMENT=development" in environ


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("signum", "whole_group"),
    # a terminal's Ctrl-C reaches the whole foreground group; `kill` only the dev process
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "sigterm"],
)
def test_dev_runs_the_stack_and_stops_it_cleanly(
    tmp_path: Path, signum: signal.Signals, whole_group: bool
) -> None:
    data_dir, port = tmp_path / "storage", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEPIPE_", "AWS_"))}
    env["IMAGEPIPE_DATA_DIR"] = str(data_dir)
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        role_argv("dev", "--port", str(port)),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so a failed test can still clean up the whole tree
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: dev.poll() is not None or answers_200(f"{base}/readyz"), 45, 0.25)
        assert dev.poll() is None, (tmp_path / "dev.log").read_text()
        assert answers_200(f"{base}/healthz")
        running = " | ".join(stack_processes(data_dir).values())
        # worker and replicator may be between a crash and their restart; these must be up
        for name in ("valkey", "rclone serve s3", "imagepipe api", "imagepipe dev"):
            assert name in running
        assert_roles_got_the_data_dirs_own_secrets(data_dir)
        # dev announces the stack once its own check of the api port passes (its next tick)
        wait_for(lambda: "imagepipe is up: " in (tmp_path / "dev.log").read_text(), 10, 0.1)
        if whole_group:
            os.killpg(dev.pid, signum)
        else:
            dev.send_signal(signum)
        assert dev.wait(timeout=30) == 0, (tmp_path / "dev.log").read_text()
        assert stack_processes(data_dir) == {}
    finally:
        for pid in stack_processes(data_dir):
            os.kill(pid, signal.SIGKILL)
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        log.close()


# -- what a role's own log lines say -----------------------------------------------------


def role_lines(argv: list[str], env: dict[str, str]) -> list[str]:
    """The log lines of one run of a role (text format: `time role level message`)."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line[:2].isdigit()]


@pytest.mark.e2e
async def test_a_worker_names_its_lane_and_counts_the_photos_it_failed(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    broken = images.truncated(images.jpeg(1600, 1200), 0.4)  # a header, then half a body
    for body in (images.jpeg(320, 240), broken):
        sent = await http.post("/photos", content=body, headers={"content-type": "image/jpeg"})
        assert sent.status_code == 202, sent.text
    env = role_env(settings, IMAGEPIPE_LOG_FORMAT="text", IMAGEPIPE_WORKER_CONCURRENCY="1")
    uploads = await asyncio.to_thread(role_lines, role_argv("worker", "--burst"), env)
    assert {line.split()[1] for line in uploads} == {"worker"}
    # arq counts jobs, and both jobs succeeded as jobs; the last line counts photos
    assert uploads[-1].endswith(
        "worker stopped; photos in this process: 1 completed, 1 failed (0 tries retried)"
    )
    backfill = role_argv("worker", "--lane", "backfill", "--burst")
    lines = await asyncio.to_thread(role_lines, backfill, env)
    assert lines and {line.split()[1] for line in lines} == {"backfill"}
