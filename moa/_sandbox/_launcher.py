"""The local sandbox's launcher: a process of its own between moa and the program, standard library only.

Run as ``python -I -S -B _launcher.py CONFIG`` (JSON) with the program's pipes as its own and a status
pipe, whose number CONFIG names, on which it reports in JSON lines: ``{"notes": [...]}`` once set up,
``{"error": "..."}`` if it could not, ``{"status": ..., "cpu_s": ...}`` when the program ended.  It never
imports moa (it must start fast, and nothing of moa's belongs in the sandbox).

The launcher (L) sets up what its mode allows, then forks.  With namespaces, L's child (C) is the init
of a new PID namespace: it mounts a private /proc, forks the program (G), reaps, reports G's end and
exits, and the kernel kills whatever is left in the namespace.  Without, G is L's child; L reports and
kills its own process group.  G sets its limits, drops its privileges and execs the interpreter.

Modes: ``root-ns`` (root: new mount, network, PID and IPC namespaces; G runs as a uid of its own),
``user-ns`` (the same inside a user namespace, for a user who is not root, and G in a nested one so it
has no capability left), ``root-plain`` (root, no namespaces: G runs as a uid of its own), ``plain``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import signal
import sys
import time
from typing import Any

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
ST_RELATIME = 4096
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
NESTED_UID = 1000  # the program's uid inside its own user namespace (user-ns mode)
NS_MODES = ("root-ns", "user-ns")
READ_ONLY = "read-only filesystem except the working directory"

# Runs the program as __main__ from main.py, with exit() and quit() (site.py, skipped by -S, defines
# them), and prints a traceback without this bootstrap's frame: what `python main.py` would print.
BOOTSTRAP = """\
import builtins, os, sys, types
def _exit(code=None):
    raise SystemExit(code)
builtins.exit = builtins.quit = _exit
path = os.path.join(os.getcwd(), "main.py")
sys.argv[:] = [path]
main = types.ModuleType("__main__")
main.__file__ = path
sys.modules["__main__"] = main
del builtins, os, types, _exit
try:
    with open(path, "rb") as file:
        exec(compile(file.read(), path, "exec", dont_inherit=True), main.__dict__)
except SystemExit:
    raise
except BaseException as error:
    error.__traceback__ = error.__traceback__.tb_next
    sys.excepthook(type(error), error, error.__traceback__)
    sys.exit(1)
"""

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encoded = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _call(_libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3]), f"mount {target}")


def _report(fd: int, record: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(record) + "\n").encode())


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _enter_user_namespace(inner: int, outer: int, outer_gid: int, flags: int = 0) -> None:
    """A new user namespace (plus ``flags``) in which ``outer`` (this process's ids) is ``inner``."""
    _call(_libc.unshare(CLONE_NEWUSER | flags), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inner} {outer} 1")
    _write("/proc/self/gid_map", f"{inner} {outer_gid} 1")


def _octal(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 8))


def _set_readonly(notes: list[str]) -> None:
    """Every mount in this namespace read-only: mount_setattr(2) where the kernel has it, else one by one."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    size = ctypes.c_size_t(ctypes.sizeof(attr))
    if _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), size) == 0:
        return
    failed = []
    with open("/proc/self/mountinfo") as file:
        targets = sorted({re.sub(r"\\([0-7]{3})", _octal, line.split()[4]) for line in file})
    for target in targets:
        try:
            now = os.statvfs(target).f_flag  # flags a user namespace may not drop must be passed again
            kept = now & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
            atime = MS_RELATIME if now & ST_RELATIME else 0
            _mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept | atime)
        except FileNotFoundError:
            continue  # under a hidden folder now: out of reach anyway
        except OSError:
            failed.append(target)
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        notes.append(f"{READ_ONLY} but {shown} (could not be remounted read-only)")


def _private_mounts(config: dict[str, Any], kept: dict[str, int], owner: int, code: bytes, notes: list[str]) -> None:
    """Hide the private folders, show the interpreter again, make all read-only, give a tmpfs to work in."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    for path in config["hide"]:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=1024")
    for path, fd in kept.items():
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    workdir, limits = config["workdir"], config["limits"]
    os.makedirs(workdir, exist_ok=True)
    _set_readonly(notes)
    options = f"mode=0700,size={limits['disk_mb']}m,nr_inodes=16384,uid={owner},gid={owner}"
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, options)
    program = os.path.join(workdir, "main.py")
    with open(program, "wb") as file:
        file.write(code)
    os.chown(program, owner, owner)


def _prepare(config: dict[str, Any], notes: list[str]) -> None:
    """Everything L does before it forks, by mode."""
    mode, uid, workdir = config["mode"], config["uid"], config["workdir"]
    with open(os.path.join(workdir, "main.py"), "rb") as file:
        code = file.read()
    if mode == "root-plain":
        for path in (workdir, os.path.join(workdir, "main.py")):
            os.chown(path, uid, uid)
        return
    if mode not in NS_MODES:
        return
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    if mode == "root-ns":
        _call(_libc.unshare(flags), "unshare")
    else:  # a user who is not root: the user's ids are root's in a namespace of its own
        _enter_user_namespace(0, os.getuid(), os.getgid(), flags)
    # Opened in the new mount namespace (a bind mount's source must be in it) before anything is hidden.
    kept = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in config["keep"]}
    _private_mounts(config, kept, uid if mode == "root-ns" else 0, code, notes)


def _processes_of(uid: int) -> int:
    """Threads of every process whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as file:
                fields = dict(line.split(":", 1) for line in file if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, ValueError, KeyError):
            continue
    return count


def _become_program(config: dict[str, Any], status_fd: int) -> None:
    """G: limits, privileges dropped, then the interpreter.  Never returns."""
    parent = os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the launcher's handler is not the program's
    try:
        mode, uid, limits = config["mode"], config["uid"], config["limits"]
        os.chdir(config["workdir"])
        megabyte = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["disk_mb"] * megabyte,) * 2)
        processes = limits["processes"]
        if mode == "plain":  # RLIMIT_NPROC counts every process of this user: allow this many more
            processes += _processes_of(os.getuid())
        if mode == "user-ns":  # its parents (L and C) count too in the namespace above its own
            resource.setrlimit(resource.RLIMIT_NPROC, (processes + 2, processes + 2))
            _enter_user_namespace(NESTED_UID, 0, 0)
        if mode in ("root-ns", "root-plain"):
            _drop_to(uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        _die_with_parent(parent)  # only now: a change of uid clears it
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * megabyte,) * 2)
        os.execve(config["argv"][0], config["argv"], config["env"])
    except BaseException as error:  # anything at all: report it, never fall back into the launcher
        _report(status_fd, {"error": f"the program could not be started: {error}"})
    os._exit(71)


def _wait(pid: int, status_fd: int) -> None:
    """Reap children until ``pid`` ends, then report how it ended."""
    while True:
        ended, status, usage = os.wait4(-1, 0)
        if ended == pid:
            _report(status_fd, {"status": status, "cpu_s": usage.ru_utime + usage.ru_stime})
            return


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL this process when its parent dies (the launcher killed, moa killed), so no tree outlives it."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:  # it died before that took effect
        os._exit(72)


def _init(config: dict[str, Any], status_fd: int) -> None:
    """C, the init of the new PID namespace.  Never returns; when it exits, the namespace dies."""
    _die_with_parent(None)  # its parent is outside its namespace: getppid() says 0 either way
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as error:
        _report(status_fd, {"notes": [f"the host's /proc is visible (a private one could not be mounted: {error})"]})
    pid = os.fork()
    if pid == 0:
        _become_program(config, status_fd)
    _wait(pid, status_fd)
    os._exit(0)


def main() -> None:
    config = json.loads(sys.argv[1])
    _die_with_parent(config["parent"])
    status_fd = config["status_fd"]
    os.set_inheritable(status_fd, False)  # the program must not be able to forge a report
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGXCPU):
        signal.signal(number, signal.SIG_DFL)
    notes: list[str] = []
    try:
        _prepare(config, notes)
    except Exception as error:
        _report(status_fd, {"error": f"{config['mode']} set-up failed: {error}"})
        os._exit(70)
    _report(status_fd, {"notes": notes})
    if config["mode"] not in NS_MODES:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        signal.signal(signal.SIGTERM, _end_tree_and_exit)  # moa's way to stop the run: the tree, then this
    pid = os.fork()
    if pid == 0:
        if config["mode"] in NS_MODES:
            _init(config, status_fd)
        _become_program(config, status_fd)
    if config["mode"] in NS_MODES:
        os.waitpid(pid, 0)
        os._exit(0)
    _wait(pid, status_fd)
    _end_tree_and_exit()


def _end_tree_and_exit(*_: object) -> None:
    """Without a PID namespace: SIGKILL every descendant, new sessions included (orphans come to this
    subreaper), round after round until none is left; then whatever is in the process group, this too."""
    me = os.getpid()
    for _round in range(2000):
        for pid in _children_of(me):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            break
        time.sleep(0.005)
    os.killpg(0, signal.SIGKILL)


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.isdigit() and int(fields[1]) == parent:
            children.append(int(entry))
    return children


if __name__ == "__main__":
    main()
