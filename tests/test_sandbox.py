"""The sandbox for model-written code: each test is a program a model might write, run by the local backend.

Each is contained within its limit and said so in one line.  Where this machine has no namespaces
(or the suite runs without root), a test asserts the honest ``isolation`` statement instead of the
containment that is not there.  Every program-running test runs twice: with namespaces where the
machine allows them, and with namespaces turned off (the fallback).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moa._errors import MoAError
from moa._sandbox import Execution, Limits, LocalSandbox, SandboxUnavailable, _container, sandbox
from moa._sandbox._isolation import ENV_NAMES

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(wall_s=10.0, cpu_s=3, memory_mb=128, processes=16)
slow = pytest.mark.slow


def claims(done: Execution, phrase: str) -> bool:
    return any(line.startswith(phrase) for line in done.isolation)


@pytest.fixture(scope="module")
def runs_dir() -> Iterator[Path]:
    """Where the runs' working directories go (any user can pass through, as /tmp)."""
    folder = Path(tempfile.mkdtemp(prefix="moa-sandbox-tests-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["namespaces", "no namespaces"])
def box(request: pytest.FixtureRequest, runs_dir: Path) -> Iterator[LocalSandbox]:
    yield LocalSandbox(namespaces=request.param == "namespaces", tmp_root=runs_dir)
    assert _running_in(runs_dir) == [], "a process of the run outlived it"
    assert list(runs_dir.iterdir()) == [], "a working directory was left behind"


def _running_in(runs_dir: Path) -> list[int]:
    """Processes whose environment points into ``runs_dir`` (every program's and launcher's HOME does)."""
    marker = f"HOME={runs_dir}/".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker in Path(f"/proc/{entry}/environ").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


async def _until(condition: Any, seconds: float = 20.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return bool(condition())


# ----------------------------------------------------------------- ordinary programs


@slow
async def test_a_program_printing_42_succeeds(box: LocalSandbox) -> None:
    done = await box.run("print(6 * 7)", limits=LIMITS)
    assert done.ok and done.stdout == "42\n" and done.stderr == ""
    assert (done.exit_status, done.limit, done.reason) == (0, None, None)
    assert done.isolation[0] == "separate process" and claims(done, "empty environment")


@slow
async def test_an_exception_is_named_in_the_reason(box: LocalSandbox) -> None:
    done = await box.run("x = 1\nprint(x / 0)", limits=LIMITS)
    assert not done.ok and done.exit_status == 1 and done.limit is None
    assert done.reason == "exited with status 1: ZeroDivisionError: division by zero"
    assert 'main.py", line 2, in <module>' in done.stderr and "<string>" not in done.stderr  # its own traceback


@slow
async def test_a_syntax_error_is_named_and_exit_and_quit_work(box: LocalSandbox) -> None:
    broken = await box.run("def f(:\n    pass", limits=LIMITS)
    assert broken.exit_status == 1 and broken.reason is not None and "SyntaxError" in broken.reason
    quitted = await box.run("print('bye')\nexit(3)", limits=LIMITS)
    assert (quitted.exit_status, quitted.stdout, quitted.reason) == (3, "bye\n", "exited with status 3")


@slow
async def test_sys_exit_before_printing_is_ok_but_printed_nothing(box: LocalSandbox) -> None:
    done = await box.run("import sys\nsys.exit(0)\nprint('never')", limits=LIMITS)
    assert done.ok and done.stdout == "" and done.reason == "printed nothing"


@slow
async def test_bytes_that_are_not_utf8_are_replaced_not_raised(box: LocalSandbox) -> None:
    done = await box.run("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok \\x80\\n')", limits=LIMITS)
    assert done.ok and done.stdout == "\ufffd\ufffd ok \ufffd\n"


@slow
async def test_stdin_is_the_programs_input(box: LocalSandbox) -> None:
    done = await box.run("print(input()[::-1], input())", limits=LIMITS, stdin="abc\ndef\n")
    assert done.ok and done.stdout == "cba def\n"


# ----------------------------------------------------------------- what it must not reach


@slow
async def test_no_variable_of_ours_is_in_its_environment(box: LocalSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "OPENAI_API_KEY": "sk-test-openai-0123456789",
        "ANTHROPIC_API_KEY": "sk-ant-test-0123456789",
        "MY_TOKEN": "token-0123456789abcdef",
        "DB_SECRET": "secret-0123456789abcdef",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    done = await box.run("import json, os\nprint(json.dumps(dict(os.environ)))", limits=LIMITS)
    seen = json.loads(done.stdout)
    assert set(seen) == set(ENV_NAMES)
    assert not any(value in done.stdout for value in secrets.values())
    assert seen["HOME"] == seen["TMPDIR"] and seen["HOME"] != str(Path.home())


@slow
async def test_our_process_environment_cannot_be_read_through_proc(box: LocalSandbox) -> None:
    code = "pid = int(input())\ntry:\n    open(f'/proc/{pid}/environ', 'rb').read()\n    print('readable')\n"
    code += "except OSError as error:\n    print(type(error).__name__)"
    done = await box.run(code, limits=LIMITS, stdin=f"{os.getpid()}\n")
    assert done.ok
    if claims(done, "own PID namespace") or claims(done, "unprivileged user"):
        assert done.stdout.strip() in ("FileNotFoundError", "PermissionError", "ProcessLookupError")
    else:
        assert claims(done, "runs as root") or claims(done, "runs as your user")


@slow
async def test_the_users_home_and_temporary_files_cannot_be_read(box: LocalSandbox, tmp_path: Path) -> None:
    home_secret = Path.home() / f".moa-sandbox-test-{uuid.uuid4().hex}"
    tmp_secret = tmp_path / "secret.txt"
    try:
        for path in (home_secret, tmp_secret):
            path.write_text(f"the secret in {path.name}")
            path.chmod(0o600)
        code = "import sys\nfor path in sys.stdin.read().split():\n    try:\n        print(open(path).read())\n"
        code += "    except OSError as error:\n        print(path, type(error).__name__)"
        done = await box.run(code, limits=LIMITS, stdin=f"{home_secret}\n{tmp_secret}\n")
    finally:
        home_secret.unlink(missing_ok=True)
    assert done.ok
    if claims(done, "private mounts") or claims(done, "unprivileged user"):
        assert "the secret" not in done.stdout
        assert done.stdout.count("Error") == 2
    else:
        assert claims(done, "files not isolated")


@slow
async def test_it_cannot_write_outside_its_working_directory(box: LocalSandbox, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)  # open to anyone: only the sandbox's own walls may stop it
    targets = [tmp_path / "escaped.txt", Path(tempfile.gettempdir()) / f"moa-escaped-{uuid.uuid4().hex}"]
    targets.append(Path.home() / f".moa-escaped-{uuid.uuid4().hex}")
    code = "import sys\nopen('mine.txt', 'w').write('fine')\nprint(open('mine.txt').read())\n"
    code += "for path in sys.stdin.read().split():\n    try:\n        open(path, 'w').write('escaped')\n"
    code += "        print('wrote', path)\n    except OSError as error:\n        print(type(error).__name__)"
    try:
        done = await box.run(code, limits=LIMITS, stdin="\n".join(map(str, targets)))
        escaped = [path for path in targets if path.exists()]
    finally:
        for path in targets:
            path.unlink(missing_ok=True)
    assert done.ok and done.stdout.startswith("fine\n")  # its own directory is its to write
    if claims(done, "read-only filesystem"):
        assert escaped == [] and "wrote" not in done.stdout
    else:
        assert claims(done, "files not isolated")


@slow
async def test_it_cannot_open_a_network_connection(box: LocalSandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        code = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        code += "    print('connected')\nexcept OSError as error:\n    print('refused:', error)"
        done = await box.run(code, limits=LIMITS)
        try:
            server.accept()[0].close()
            reached_us = True
        except BlockingIOError:
            reached_us = False
    assert done.ok
    if claims(done, "no network"):
        assert not reached_us and done.stdout.startswith("refused:") and "unreachable" in done.stdout
    else:
        assert reached_us and done.stdout == "connected\n" and claims(done, "network not isolated")


# ----------------------------------------------------------------- limits


@slow
async def test_an_infinite_loop_ends_at_its_cpu_or_wall_limit(box: LocalSandbox) -> None:
    done = await box.run("while True:\n    pass", limits=Limits(wall_s=10.0, cpu_s=2, memory_mb=128))
    assert done.limit in ("cpu_time", "wall_time") and done.exit_status is None and not done.ok
    expected = (
        "used up its CPU-time limit of 2 s" if done.limit == "cpu_time" else "ran past its wall-time limit of 10 s"
    )
    assert done.reason == expected


@slow
async def test_a_sleeping_program_ends_at_its_wall_limit_and_keeps_what_it_printed(box: LocalSandbox) -> None:
    done = await box.run("import time\nprint('started')\ntime.sleep(600)", limits=Limits(wall_s=1.5, memory_mb=128))
    assert (done.limit, done.exit_status, done.stdout) == ("wall_time", None, "started\n")
    assert done.reason == "ran past its wall-time limit of 1.5 s" and done.wall_s >= 1.5


@slow
async def test_a_memory_bomb_runs_out_of_memory(box: LocalSandbox) -> None:
    done = await box.run("blocks = []\nwhile True:\n    blocks.append(bytearray(10_000_000))", limits=LIMITS)
    assert done.limit == "memory" and done.reason is not None and "out of memory (limit 128 MB)" in done.reason


@slow
async def test_100_mb_of_output_is_cut_and_the_program_killed(box: LocalSandbox) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = "import sys\nchunk = b'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.buffer.write(chunk)"
    done = await box.run(code, limits=LIMITS)
    assert done.limit == "output" and done.exit_status is None
    assert done.reason == "killed: more than 65,536 bytes of output"
    assert done.stdout == "x" * LIMITS.output_bytes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing near 100 MB held


@slow
async def test_a_fork_bomb_is_contained_and_leaves_nothing_running(box: LocalSandbox) -> None:
    if any("process limit not enforced" in line for line in await box.isolation()):
        pytest.skip("no process limit can bind here (root, no namespaces, no other uid): said in isolation")
    done = await box.run("import os\nwhile True:\n    os.fork()", limits=Limits(wall_s=10.0, memory_mb=128))
    assert done.limit in ("processes", "wall_time", "cpu_time", "output") and not done.ok
    assert done.reason is not None
    after = await box.run("print(42)", limits=LIMITS)  # the machine is still usable
    assert after.ok and after.stdout == "42\n"


@slow
async def test_cancelling_a_run_kills_its_whole_tree(box: LocalSandbox, runs_dir: Path) -> None:
    code = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        break\nelse:\n"
    code += "    if os.fork() == 0:\n        os.setsid()\ntime.sleep(600)"
    task = asyncio.create_task(box.run(code, limits=Limits(wall_s=120.0, memory_mb=128)))
    assert await _until(lambda: len(_running_in(runs_dir)) >= 5), "the program never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _until(lambda: _running_in(runs_dir) == [], seconds=10.0)


@slow
async def test_concurrent_runs_do_not_disturb_each_other(box: LocalSandbox) -> None:
    bombs = {
        "memory": "blocks = []\nwhile True:\n    blocks.append(bytearray(10_000_000))",
        "wall_time": "import time\ntime.sleep(600)",
    }
    if not any("process limit not enforced" in line for line in await box.isolation()):
        bombs["fork"] = "import os\nwhile True:\n    os.fork()"
    limits = Limits(wall_s=3.0, memory_mb=128)
    async with asyncio.TaskGroup() as group:
        normal = [group.create_task(box.run(f"print({n} * {n})", limits=LIMITS)) for n in range(4)]
        hostile = {name: group.create_task(box.run(code, limits=limits)) for name, code in bombs.items()}
    assert [task.result().stdout for task in normal] == ["0\n", "1\n", "4\n", "9\n"]
    assert all(task.result().ok for task in normal)
    assert hostile["memory"].result().limit == "memory" and hostile["wall_time"].result().limit == "wall_time"
    if "fork" in hostile:
        assert hostile["fork"].result().limit in ("processes", "wall_time", "cpu_time", "output")


@slow
async def test_a_run_never_blocks_the_event_loop(box: LocalSandbox) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    done = await box.run("import time\ntime.sleep(1.5)\nprint('woke')", limits=LIMITS)
    ticker.cancel()
    assert done.ok and ticks >= 3


# ----------------------------------------------------------------- what it says


@slow
async def test_isolation_says_what_was_in_force(runs_dir: Path) -> None:
    with_ns = await LocalSandbox(tmp_root=runs_dir).run("print(1)", limits=LIMITS)
    assert claims(with_ns, "no network") != claims(with_ns, "network not isolated")
    assert claims(with_ns, "private mounts") != claims(with_ns, "files not isolated")
    assert claims(with_ns, "rlimits: CPU 3 s, address space 128 MB")
    without = await LocalSandbox(namespaces=False, tmp_root=runs_dir).run("print(1)", limits=LIMITS)
    assert claims(without, "network not isolated: namespaces turned off (namespaces=False)")
    assert claims(without, "files not isolated") and not claims(without, "private mounts")


@slow
async def test_to_trace_is_json_with_outputs_cut(runs_dir: Path) -> None:
    done = await LocalSandbox(tmp_root=runs_dir).run("print('a' * 10_000)\nprint('sk-abcdefghijklmnop')", limits=LIMITS)
    trace = done.to_trace()
    assert set(trace) == {"code", "exit_status", "stdout", "stderr", "wall_s", "limit", "reason", "isolation"}
    assert json.loads(json.dumps(trace)) == trace
    assert 2_000 <= len(trace["stdout"]) < 2_100 and "characters cut" in trace["stdout"]
    assert "sk-abcdefghijklmnop" not in trace["stdout"] and "sk-abcdefghijklmnop" in done.stdout


def test_limits_refuse_nonsense() -> None:
    for bad in ({"wall_s": 0}, {"cpu_s": -1}, {"memory_mb": 1.5}, {"processes": True}):
        with pytest.raises(ValueError, match="must be a"):
            Limits(**bad)


def test_an_unknown_backend_is_named_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown sandbox backend 'vm': choose one of 'local', 'container'"):
        sandbox("vm")
    assert sandbox("local").name == "local"


# ----------------------------------------------------------------- the container backend


def test_the_container_backend_without_its_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_module(name: str) -> Any:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(_container.importlib, "import_module", no_such_module)
    with pytest.raises(SandboxUnavailable, match=r"pip install 'moa-pipeline\[sandbox-container\]'") as caught:
        sandbox("container")
    assert isinstance(caught.value, MoAError)


class _FakeSession:
    script: Any = None

    def __init__(self, **options: Any) -> None:
        self.options = options

    def __enter__(self) -> _FakeSession:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def run(self, program: str, timeout: float) -> Any:
        return type(self).script(program, timeout)


def _fake_modules(monkeypatch: pytest.MonkeyPatch, ping: Any) -> None:
    library = type(sys)("llm_sandbox")
    library.SandboxSession = _FakeSession  # type: ignore[attr-defined]
    docker = type(sys)("docker")
    docker.from_env = lambda: type("Client", (), {"ping": staticmethod(ping)})()  # type: ignore[attr-defined]
    monkeypatch.setattr(_container.importlib, "import_module", {"llm_sandbox": library, "docker": docker}.__getitem__)


def test_the_container_backend_without_an_engine_says_to_start_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> None:
        raise ConnectionError("Connection refused")

    _fake_modules(monkeypatch, refused)
    with pytest.raises(SandboxUnavailable, match=r"no docker engine answers .*Connection refused.*start it"):
        sandbox("container")


async def test_the_container_backend_reports_as_the_local_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_modules(monkeypatch, lambda: True)
    seen: list[str] = []
    stdout = "small"

    def script(program: str, timeout: float) -> Any:
        seen.append(program)
        return type("Result", (), {"exit_code": 1, "stdout": stdout, "stderr": "ZeroDivisionError: no"})()

    _FakeSession.script = script
    box = sandbox("container")
    done = await box.run("print(1)", limits=LIMITS, stdin="in")
    assert "sys.stdin = io.StringIO('in')" in seen[0] and "'print(1)'" in seen[0]
    assert (done.exit_status, done.limit) == (1, None) and done.reason == "exited with status 1: ZeroDivisionError: no"
    assert claims(done, "no network")
    stdout = "x" * 70_000
    flooded = await box.run("print(1)", limits=LIMITS)
    assert len(flooded.stdout) == LIMITS.output_bytes and flooded.limit == "output"
    assert flooded.reason == "printed more than 65,536 bytes of output (cut)"


# ----------------------------------------------------------------- the other modes, in a child interpreter

CHILD = """
import asyncio, json, sys
sys.path.insert(0, {root!r})
from moa._sandbox import LocalSandbox, Limits
PROGRAMS = {{
    "hello": "print(42)",
    "env": "import os; print(sorted(os.environ))",
    "bomb": "import os\\nwhile True:\\n    os.fork()",
    "net": "import socket\\ntry:\\n    socket.create_connection(('127.0.0.1', 9), timeout=3)\\n"
    "except OSError as e:\\n    print(e)",
}}
async def main():
    box = LocalSandbox(namespaces={namespaces})
    if any("process limit not enforced" in line for line in await box.isolation()):
        del PROGRAMS["bomb"]  # root with neither namespaces nor another uid: nothing would contain it
    runs = {{}}
    for name, code in PROGRAMS.items():
        done = await box.run(code, limits=Limits(wall_s=10.0, memory_mb=128))
        runs[name] = [done.exit_status, done.limit, done.stdout, list(done.isolation)]
    print(json.dumps(runs))
asyncio.run(main())
"""


def _unprivileged_python() -> str | None:
    """An interpreter (3.11+) that an unprivileged user can run, with this checkout importable, or None."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    for python in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        check = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); import moa._sandbox; assert sys.version_info >= (3, 11)"
        )
        if os.path.exists(python) and _as_nobody([python, "-c", check]).returncode == 0:
            return python
    return None


def _as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        "HOME=/",
    ]
    return subprocess.run([*setpriv, *argv], capture_output=True, text=True, timeout=600, cwd="/")


@slow
@pytest.mark.parametrize("who", ["root without namespaces", "an unprivileged user"])
def test_the_other_modes_contain_it_too(who: str) -> None:
    python = _unprivileged_python()
    if python is None:
        pytest.skip("needs root, setpriv and an interpreter an unprivileged user can run")
    script = CHILD.format(root=str(ROOT), namespaces=who == "an unprivileged user")
    if who == "an unprivileged user":
        done = _as_nobody([python, "-c", script])
    else:
        done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=600, env={}, cwd="/")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)
    isolation = runs["hello"][3]
    assert runs["hello"][:3] == [0, None, "42\n"]
    assert json.loads(runs["env"][2].replace("'", '"')) == sorted(ENV_NAMES)
    users = ("unprivileged user", "runs as your user") if who == "an unprivileged user" else ("unprivileged user",)
    if any(line.startswith(users) for line in isolation):
        assert runs["bomb"][1] in ("processes", "wall_time", "cpu_time", "output")
    else:  # root whose kernel refuses it another uid: then it must say the process limit cannot bind
        assert "bomb" not in runs and any("process limit not enforced" in line for line in isolation)
    if any("no network" in line for line in isolation):
        assert "unreachable" in runs["net"][2]
    else:
        assert any("network not isolated" in line for line in isolation)
    uids = {int(uid) for run in runs.values() for line in run[3] for uid in re.findall(r"uid (\d+) of its own", line)}
    assert [pid for pid, uid in _processes_by_uid() if uid in uids] == []


def _processes_by_uid() -> list[tuple[int, int]]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            found.append((int(entry), int(Path(f"/proc/{entry}/status").read_text().split("Uid:")[1].split()[0])))
        except (OSError, IndexError, ValueError):
            continue
    return found
