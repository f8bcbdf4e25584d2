"""The sandbox's words, exactly: how a run's end is told (``_verdict``), what a run says was in force
(``_isolation``), and what ``Limits`` and ``Execution`` accept and record.

Written against the mutants of ``moa/_sandbox`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).  Nothing here starts a program: these are the parent's own decisions.
"""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from moa._sandbox._types import Limits
from moa._sandbox._verdict import Ending, judge

LIMITS = Limits(wall_s=2.5, cpu_s=3, memory_mb=128, processes=16, output_bytes=65536)
FORK = "BlockingIOError: [Errno 11] Resource temporarily unavailable"


def traceback(*last: str) -> str:
    return 'Traceback (most recent call last):\n  File "main.py", line 1, in <module>\n' + "\n".join(last) + "\n"


@pytest.mark.parametrize(
    ("ending", "stdout", "stderr", "expected"),
    [
        # What we killed, and why.
        (Ending(killed_for="wall_time"), "", "", (None, "wall_time", "ran past its wall-time limit of 2.5 s")),
        (Ending(killed_for="output"), "x", "", (None, "output", "killed: more than 65,536 bytes of output")),
        (
            Ending(killed_for="wall_time"),
            "",
            f"OSError: fork: retry: no child\n{FORK}\nstill waiting\n",
            (None, "processes", f"hit its limit of 16 processes ({FORK}), then ran past its wall-time limit of 2.5 s"),
        ),
        # A signal: the CPU limit's, our SIGKILL past the CPU time, or another.
        (Ending(signal=signal.SIGXCPU), "", "", (None, "cpu_time", "used up its CPU-time limit of 3 s")),
        (Ending(signal=signal.SIGKILL, cpu_s=3.0), "", "", (None, "cpu_time", "used up its CPU-time limit of 3 s")),
        (Ending(signal=signal.SIGKILL, cpu_s=2.9), "", "", (-9, None, "killed by signal SIGKILL")),
        (Ending(signal=200), "", "", (-200, None, "killed by signal 200")),
        # The sandbox could not run it.
        (
            Ending(error="no such interpreter"),
            "",
            "",
            (None, None, "the sandbox could not run it: no such interpreter"),
        ),
        (Ending(), "", "", (None, None, "the sandbox could not run it: its launcher ended without a report")),
        # It exited with a status: the last exception line of the tail, or its last line.
        (
            Ending(code=1),
            "",
            traceback("ValueError: bad", "  and more"),
            (1, None, "exited with status 1: ValueError: bad"),
        ),
        (
            Ending(code=2),
            "",
            "usage: main.py\nno exception here\n",
            (2, None, "exited with status 2: no exception here"),
        ),
        (Ending(code=3), "", "", (3, None, "exited with status 3")),
        (Ending(code=4), "", "KeyboardInterrupt\n", (4, None, "exited with status 4: KeyboardInterrupt")),
        (Ending(code=1), "", traceback("MemoryError"), (1, "memory", "ran out of memory (limit 128 MB): MemoryError")),
        (
            Ending(code=1),
            "",
            "OSError: [Errno 12] cannot ALLOCATE memory\n",
            (1, "memory", "ran out of memory (limit 128 MB): OSError: [Errno 12] cannot ALLOCATE memory"),
        ),
        (
            Ending(code=1),
            "",
            traceback("RuntimeError: can't start new thread"),
            (1, "processes", "hit its limit of 16 processes: RuntimeError: can't start new thread"),
        ),
        # Exited well: with output, or without.
        (Ending(code=0), "42\n", "", (0, None, None)),
        (Ending(code=0), "", "a warning\n", (0, None, "printed nothing")),
    ],
)
def test_how_a_run_ended_is_told_in_a_status_a_limit_and_a_line(
    ending: Ending, stdout: str, stderr: str, expected: tuple[int | None, str | None, str | None]
) -> None:
    assert judge(ending, LIMITS, stdout, stderr) == expected


def test_only_the_last_ten_lines_of_stderr_are_evidence() -> None:
    early = "MemoryError: long ago\n" + "".join(f"line {n}\n" for n in range(10))
    assert judge(Ending(code=1), LIMITS, "", early) == (1, None, "exited with status 1: line 9")
    within = "MemoryError: just now\n" + "".join(f"line {n}\n" for n in range(9))
    assert judge(Ending(code=1), LIMITS, "", within) == (
        1,
        "memory",
        "ran out of memory (limit 128 MB): MemoryError: just now",
    )
    blank_lines_do_not_count = "MemoryError: just now\n" + "\n \n" * 20 + "".join(f"line {n}\n" for n in range(9))
    assert judge(Ending(code=1), LIMITS, "", blank_lines_do_not_count)[1] == "memory"


def test_a_long_line_is_cut_to_200_characters() -> None:
    fits, longer = "E" * 200, "ValueError: " + "x" * 300
    assert judge(Ending(code=1), LIMITS, "", f"{fits}\n")[2] == f"exited with status 1: {fits}"
    assert judge(Ending(code=1), LIMITS, "", f"{longer}\n")[2] == f"exited with status 1: {longer[:197]}..."
    cause = f"{FORK} " + "y" * 300
    assert judge(Ending(killed_for="output"), LIMITS, "", cause)[2] == (
        f"hit its limit of 16 processes ({cause[:197]}...), then killed: more than 65,536 bytes of output"
    )


# --- what a run says was in force -------------------------------------------------------------------------------

SAID = Limits(cpu_s=3, memory_mb=128, processes=16, disk_mb=32)
COMMON = (
    "separate process",
    "isolated interpreter (python -I -S -B: standard library only)",
    "empty environment: only PATH, HOME, TMPDIR, LANG, LC_ALL, USER, LOGNAME set",
)
NAMESPACES = (
    "no network (network namespace: only a loopback that is down)",
    "own PID namespace: the whole process tree dies with the run",
    "private mounts: /home, /tmp hidden (shown again, read-only: /opt/py)",
    "read-only filesystem except the working directory: but /x writable",
    "rlimits: CPU 3 s, address space 128 MB, files 32 MB, no core dumps, 16 processes",
)
TREE = "process tree: every process it started, new sessions included, killed by its launcher (a subreaper)"


def said(
    mode: str, refused: tuple[str, ...] = (), site_packages: bool = False, kept: tuple[str, ...] = ("/opt/py",)
) -> tuple[str, ...]:
    from moa._sandbox._isolation import Choice, describe

    notes = ["read-only filesystem except the working directory: but /x writable", "a note"]
    choice = Choice(mode, refused)
    return describe(
        choice, uid=4242, limits=SAID, site_packages=site_packages, hidden=["/home", "/tmp"], kept=kept, notes=notes
    )


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)


def test_a_run_with_namespaces_as_root_says_each_thing_in_force() -> None:
    assert said("root-ns") == (
        *COMMON,
        "fresh working directory: a 32 MB tmpfs of its own, gone afterwards",
        "unprivileged user: uid 4242 of its own for each run (no account has it)",
        *NAMESPACES,
        "a note",
    )


def test_a_run_in_a_user_namespace_names_its_uid_inside_and_out(not_root: None) -> None:
    assert said("user-ns", kept=())[3:5] == (
        "fresh working directory: a 32 MB tmpfs of its own, gone afterwards",
        "unprivileged user: uid 1000 in a user namespace of its own (uid 1000 outside), no capabilities",
    )
    assert said("user-ns", kept=())[7] == "private mounts: /home, /tmp hidden"


def test_a_run_without_namespaces_says_what_is_missing_and_why() -> None:
    assert said("root-plain", ("root-ns: unshare: EPERM",)) == (
        *COMMON,
        "fresh temporary working directory, deleted afterwards",
        "unprivileged user: uid 4242 of its own for each run (no account has it)",
        "network not isolated: no namespaces on this machine",
        "files not isolated: no namespaces on this machine; it can read and write what any user may, /tmp included",
        f"{TREE}, then every process of its uid",
        "rlimits: CPU 3 s, address space 128 MB, files 32 MB, no core dumps, 16 processes",
        "could not use root-ns: unshare: EPERM",
        "a note",
    )
    assert said("plain", site_packages=True) == (
        "separate process",
        "isolated interpreter (python -I -B: site-packages too)",
        COMMON[2],
        "fresh temporary working directory, deleted afterwards",
        "runs as root: no other uid could run this interpreter",
        "network not isolated: namespaces turned off (namespaces=False)",
        "files not isolated: namespaces turned off (namespaces=False); it runs as root and can read and write anything",
        TREE,
        "rlimits: CPU 3 s, address space 128 MB, files 32 MB, no core dumps; process limit not enforced "
        "(RLIMIT_NPROC does not bind root)",
        "a note",
    )


def test_a_plain_run_as_a_user_says_it_runs_as_that_user(not_root: None) -> None:
    lines = said("plain", ("user-ns: no user namespaces",))
    assert lines[4:] == (
        "runs as your user (uid 1000): it can reach what you can, your other processes included",
        "network not isolated: no namespaces on this machine",
        "files not isolated: no namespaces on this machine; it can read and write what you can",
        TREE,
        "rlimits: CPU 3 s, address space 128 MB, files 32 MB, no core dumps, 16 processes more than your user "
        "already has",
        "could not use user-ns: no user namespaces",
        "a note",
    )


def test_a_run_with_its_own_uid_unknown_says_a_uid() -> None:
    from moa._sandbox._isolation import Choice, describe

    lines = describe(Choice("root-plain"), uid=None, limits=SAID, site_packages=False, hidden=[], kept=[])
    assert lines[4] == "unprivileged user: a uid of its own for each run (no account has it)"
    assert lines[-1] == "rlimits: CPU 3 s, address space 128 MB, files 32 MB, no core dumps, 16 processes"  # no notes
    namespaces = describe(Choice("root-ns"), uid=1, limits=SAID, site_packages=False, hidden=["/tmp"], kept=[])
    assert "read-only filesystem except the working directory" in namespaces  # said without a note of its own


def test_the_modes_tried_are_the_best_first_and_without_namespaces_only_the_plain_ones(not_root: None) -> None:
    from moa._sandbox._isolation import candidates

    assert (candidates(True), candidates(False)) == (("user-ns", "plain"), ("plain",))


def test_the_modes_tried_as_root() -> None:
    import os

    from moa._sandbox._isolation import candidates

    if os.geteuid() != 0:
        pytest.skip("moa is not running as root here")
    assert (candidates(True), candidates(False)) == (("root-ns", "root-plain", "plain"), ("root-plain", "plain"))


async def test_the_first_mode_whose_probe_passes_is_chosen_once_and_a_total_failure_is_not_kept(
    not_root: None,
) -> None:
    from moa._sandbox._isolation import Choice, choose

    probed: list[str] = []

    async def probe(mode: str) -> str | None:
        probed.append(mode)
        return None if mode == "plain" else "no user namespaces"

    key = ("test", object())
    chosen = await choose(key, True, probe)
    assert chosen == Choice("plain", ("user-ns: no user namespaces",)) and not chosen.own_uid
    assert await choose(key, True, probe) is chosen and probed == ["user-ns", "plain"]  # found once

    async def nothing(mode: str) -> str | None:
        probed.append(mode)
        return "broken"

    other = ("test", object())
    assert await choose(other, True, nothing) == Choice("plain", ("user-ns: broken", "plain: broken"))
    await choose(other, True, nothing)
    assert probed[2:] == ["user-ns", "plain", "user-ns", "plain"]  # tried again: a failure is not kept


def test_a_run_as_root_gets_a_uid_of_its_own_only_in_the_root_modes() -> None:
    from moa._sandbox._isolation import Choice

    assert [Choice(mode).own_uid for mode in ("root-ns", "root-plain", "user-ns", "plain")] == [
        True,
        True,
        False,
        False,
    ]


def test_homes_and_temporary_folders_are_hidden_but_never_a_folder_holding_the_system() -> None:
    import os
    import tempfile

    from moa._sandbox._isolation import hidden_paths

    inner = os.path.realpath(tempfile.mkdtemp(prefix="moa-hidden-"))
    try:
        extra = [p for p in ("/mnt", "/srv", "/media") if os.path.isdir(p) and not os.path.islink(p)][:1]
        found = hidden_paths([inner, *extra, "/", "/usr", "/no/such/folder"])
        assert os.path.realpath(tempfile.gettempdir()) in found and inner not in found  # the outermost only
        assert "/" not in found and "/usr" not in found
        assert all(p in found for p in extra) and found == sorted(found)
    finally:
        os.rmdir(inner)


def test_the_interpreter_is_shown_again_inside_a_hidden_folder() -> None:
    import os
    import sys

    from moa._sandbox._isolation import kept_paths

    home = os.path.realpath(sys.base_prefix)
    parent = os.path.dirname(home)
    assert kept_paths([parent], site_packages=False) == [home]
    assert kept_paths(["/no/such/folder"], site_packages=True) == []


def test_the_programs_environment_is_only_its_own() -> None:
    from moa._sandbox._isolation import environment

    assert environment("/w") == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/w",
        "TMPDIR": "/w",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
    }


# --- Limits and Execution ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"wall_s": 0}, "Limits.wall_s must be a positive number, not 0"),
        ({"cpu_s": -1}, "Limits.cpu_s must be a positive number, not -1"),
        ({"disk_mb": True}, "Limits.disk_mb must be a positive number, not True"),
        ({"memory_mb": "64"}, "Limits.memory_mb must be a positive number, not '64'"),
        ({"processes": 2.5}, "Limits.processes must be a whole number, not 2.5"),
        ({"output_bytes": 1024.0}, "Limits.output_bytes must be a whole number, not 1024.0"),
    ],
)
def test_limits_refuse_what_is_not_a_positive_number_or_not_whole_where_it_must_be(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        Limits(**fields)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_limits_accept_a_fractional_wall_time_and_have_their_defaults() -> None:
    assert Limits(wall_s=0.5).wall_s == 0.5
    assert Limits() == Limits(wall_s=10.0, cpu_s=5, memory_mb=256, processes=16, output_bytes=65536, disk_mb=64)


def test_an_executions_trace_clips_long_outputs_keeping_head_and_tail_and_masks_secrets() -> None:
    from moa._sandbox._types import TRACE_CHARS, Execution

    long = "a" * 1500 + "b" * 1500
    done = Execution("print(1)", 1, long, "key sk-abcdefghijklmnopqrstuvwxyz0123", 1.23456, None, "why", ("x",))
    trace = done.to_trace()
    half = TRACE_CHARS // 2
    assert trace["stdout"] == f"{'a' * half}\n... [{3000 - 2 * half:,} characters cut] ...\n{'b' * half}"
    assert "sk-abcdefghijklmnopqrstuvwxyz0123" not in trace["stderr"]
    assert (trace["code"], trace["exit_status"], trace["wall_s"], trace["limit"]) == ("print(1)", 1, 1.235, None)
    assert (trace["reason"], trace["isolation"]) == ("why", ["x"])
    exact = Execution("x" * TRACE_CHARS, 0, "", "", 0.0, None, None, ())
    assert exact.to_trace()["code"] == "x" * TRACE_CHARS and exact.to_trace()["reason"] is None
    assert exact.ok and not done.ok and not Execution("", 0, "", "", 0.0, "output", "cut", ()).ok


def test_an_empty_reason_is_no_reason_in_the_trace() -> None:
    from moa._sandbox._types import Execution

    assert Execution("x", 0, "1", "", 0.0, None, "", ()).to_trace()["reason"] is None


def test_every_folder_moa_hides_that_exists_here_is_hidden() -> None:
    import os
    import tempfile

    from moa._sandbox._isolation import hidden_paths

    found = hidden_paths()
    documented = ["/root", "/home", os.path.expanduser("~"), tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"]
    documented += ["/run/lock", "/run/user"]
    for folder in (os.path.realpath(f) for f in documented if os.path.isdir(f)):
        assert any(folder == h or folder.startswith(h + "/") for h in found), folder


def test_with_site_packages_the_environments_folders_are_shown_again_too() -> None:
    import os
    import sys

    from moa._sandbox._isolation import kept_paths

    base, prefix = os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)
    if base == prefix or prefix.startswith(base + "/") or base.startswith(prefix + "/"):
        pytest.skip("not run from a virtual environment apart from its interpreter")
    hidden = [os.path.dirname(base), os.path.dirname(prefix)]
    assert kept_paths(hidden, site_packages=False) == [base]
    assert kept_paths(hidden, site_packages=True) == sorted([base, prefix])


async def test_as_root_a_total_failure_falls_back_to_the_plain_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from moa._sandbox._isolation import Choice, choose

    monkeypatch.setattr(os, "geteuid", lambda: 0)

    async def nothing(mode: str) -> str | None:
        return "broken"

    refused = ("root-ns: broken", "root-plain: broken", "plain: broken")
    assert await choose(("test", object()), True, nothing) == Choice("plain", refused)


def test_every_folder_shown_again_is_named() -> None:
    assert said("root-ns", kept=("/opt/py", "/opt/lib"))[7] == (
        "private mounts: /home, /tmp hidden (shown again, read-only: /opt/py, /opt/lib)"
    )


# --- the container backend, with a library of our own in place of llm-sandbox ------------------------------------


class Session:
    """llm-sandbox's ``SandboxSession``: notes how it was made and what it ran; answers with ``Session.answer``."""

    made: ClassVar[list[dict[str, Any]]] = []
    ran: ClassVar[list[tuple[str, float]]] = []
    answer: ClassVar[Any] = (0, "ok\n", "")

    def __init__(self, **options: Any) -> None:
        Session.made.append(options)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def run(self, program: str, timeout: float) -> Any:
        Session.ran.append((program, timeout))
        if isinstance(Session.answer, Exception):
            raise Session.answer
        code, out, err = Session.answer
        return SimpleNamespace(exit_code=code, stdout=out, stderr=err)


class SandboxTimeoutError(Exception):
    """llm-sandbox's timeout (recognised by its name)."""


@pytest.fixture
def container(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from moa._sandbox import _container

    Session.made, Session.ran, Session.answer = [], [], (0, "ok\n", "")
    pinged: list[str] = []
    modules = {
        "llm_sandbox": SimpleNamespace(SandboxSession=Session),
        "docker": SimpleNamespace(from_env=lambda: SimpleNamespace(ping=lambda: pinged.append("docker"))),
        "podman": SimpleNamespace(PodmanClient=lambda: SimpleNamespace(ping=lambda: pinged.append("podman"))),
    }

    def import_module(name: str) -> Any:
        if name not in modules:
            raise ImportError(f"No module named {name!r}")
        return modules[name]

    monkeypatch.setattr(_container.importlib, "import_module", import_module)
    return {"modules": modules, "pinged": pinged}


async def test_a_container_run_asks_llm_sandbox_for_every_limit(container: dict[str, Any]) -> None:
    from moa._sandbox import ContainerSandbox

    box = ContainerSandbox(image="python:3.12-slim", keep_template=True)
    limits = Limits(wall_s=7.5, cpu_s=4, memory_mb=96, processes=12, output_bytes=2048)
    done = await box.run("print(1)", limits=limits)
    (options,) = Session.made
    assert options == {
        "backend": "docker",
        "execution_timeout": 7.5,
        "lang": "python",
        "image": "python:3.12-slim",
        "skip_environment_setup": True,
        "keep_template": True,
        "runtime_configs": {
            "mem_limit": "96m",
            "pids_limit": 12,
            "network_disabled": True,
            "ulimits": [{"Name": "cpu", "Soft": 4, "Hard": 5}],
        },
    }
    ((program, timeout),) = Session.ran
    assert timeout == 7.5 and program == _wrapped("print(1)", "")
    assert (done.exit_status, done.stdout, done.limit, done.reason) == (0, "ok\n", None, None)
    assert done.isolation == (
        "docker container through llm-sandbox, image python:3.12-slim, removed afterwards",
        "no network (network_disabled)",
        "container limits: memory 96 MB, 12 processes, CPU 4 s",
        "wall time: llm-sandbox's timeout of 7.5 s",
        "output cut to 2,048 bytes after the run, not while it runs",
    )
    assert container["pinged"] == ["docker"]


def _wrapped(code: str, stdin: str) -> str:
    return (
        f"import io, sys\nsys.stdin = io.StringIO({stdin!r})\n"
        f"exec(compile({code!r}, 'main.py', 'exec'), {{'__name__': '__main__'}})\n"
    )


async def test_a_container_runs_own_runtime_settings_win_and_podman_is_asked_too(container: dict[str, Any]) -> None:
    from moa._sandbox import ContainerSandbox

    own = {"mem_limit": "1g"}
    box = ContainerSandbox(engine="podman", runtime_configs=own)
    done = await box.run("print(1)")
    assert Session.made[0]["runtime_configs"] == own and Session.made[0]["backend"] == "podman"
    assert Session.made[0]["image"] is None and Session.made[0]["execution_timeout"] == Limits().wall_s
    assert done.isolation[0] == "podman container through llm-sandbox, image its default, removed afterwards"
    assert container["pinged"] == ["podman"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((128, "", ""), (128, None, "exited with status 128")),
        ((137, "", ""), (-9, None, "killed by signal SIGKILL")),
        ((129, "", ""), (-1, None, "killed by signal SIGHUP")),
        (SandboxTimeoutError("too slow"), (None, "wall_time", "ran past its wall-time limit of 10 s")),
    ],
)
async def test_a_containers_exit_code_past_128_is_a_signal_and_its_timeout_the_wall_time(
    container: dict[str, Any], answer: Any, expected: tuple[int | None, str | None, str | None]
) -> None:
    from moa._sandbox import ContainerSandbox

    Session.answer = answer
    done = await ContainerSandbox().run("pass")
    assert (done.exit_status, done.limit, done.reason) == expected
    assert (done.code, done.stdout, done.stderr) == ("pass", "", "") and 0.0 <= done.wall_s < 60.0


async def test_a_containers_other_failures_are_raised(container: dict[str, Any]) -> None:
    from moa._sandbox import ContainerSandbox

    Session.answer = RuntimeError("the engine went away")
    with pytest.raises(RuntimeError, match="the engine went away"):
        await ContainerSandbox().run("pass")


async def test_a_containers_output_is_cut_to_whole_bytes_after_the_run(container: dict[str, Any]) -> None:
    from moa._sandbox import ContainerSandbox

    limits = Limits(output_bytes=1024)
    Session.answer = (0, "é" * 512, "")  # exactly 1,024 bytes: kept whole
    fits = await ContainerSandbox().run("pass", limits=limits, stdin="in")
    assert (fits.stdout, fits.limit) == ("é" * 512, None) and Session.ran[0][0] == _wrapped("pass", "in")
    Session.answer = (0, "x" + "é" * 512, "")  # 1,025 bytes: cut inside a character, which is replaced
    cut = await ContainerSandbox().run("pass", limits=limits)
    assert cut.stdout == "x" + "é" * 511 + "\ufffd" and cut.limit == "output"
    assert cut.reason == "printed more than 1,024 bytes of output (cut)"


def test_a_container_backend_that_cannot_be_had_says_why(container: dict[str, Any]) -> None:
    from moa._sandbox import ContainerSandbox, SandboxUnavailable

    with pytest.raises(ValueError) as info:
        ContainerSandbox(engine="lxc")
    assert str(info.value) == "unknown container engine 'lxc': choose one of 'docker', 'podman'"
    del container["modules"]["docker"]
    with pytest.raises(SandboxUnavailable) as unavailable:
        ContainerSandbox()
    assert str(unavailable.value) == (
        "the container sandbox needs the docker client library, which is not installed: "
        "pip install 'moa-pipeline[sandbox-container]'"
    )
    del container["modules"]["llm_sandbox"]
    with pytest.raises(SandboxUnavailable) as unavailable:
        ContainerSandbox(engine="podman")
    assert str(unavailable.value).startswith("the container sandbox needs llm-sandbox, which is not installed")

    def refuse() -> None:
        raise ConnectionRefusedError("no socket")

    container["modules"]["llm_sandbox"] = SimpleNamespace(SandboxSession=Session)
    container["modules"]["podman"] = SimpleNamespace(PodmanClient=lambda: SimpleNamespace(ping=refuse))
    with pytest.raises(SandboxUnavailable) as unavailable:
        ContainerSandbox(engine="podman")
    assert str(unavailable.value) == (
        "no podman engine answers (ConnectionRefusedError: no socket): start it, or use sandbox('local')"
    )


def test_the_home_and_the_temporary_folder_are_hidden_wherever_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile

    from moa._sandbox._isolation import hidden_paths

    elsewhere = [p for p in ("/mnt", "/srv", "/media") if os.path.isdir(p) and not os.path.islink(p)]
    if len(elsewhere) < 2 or not all(os.path.isdir(p) for p in ("/root", "/tmp")):
        pytest.skip("this machine lacks the folders the test moves the home and the temporary folder to")
    home, temporary = elsewhere[:2]
    monkeypatch.setenv("HOME", home)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: temporary)
    found = hidden_paths()
    assert {"/root", "/tmp", home, temporary} <= set(found)
