"""One run per output folder: train.py holds the lock file `run.lock` in --output while it runs.

    lock = RunLock(folder)
    lock.acquire(log)    # or BadInputError: "<folder> is in use by another run: pid ..."
    ...
    lock.release()       # also as `with RunLock(folder).acquire(log): ...`

The file names its holder (pid, host, start time, command) for the message a second run gets. It
is created with O_CREAT | O_EXCL and held under flock(LOCK_EX) for as long as the run lasts: of two
runs started at the same moment exactly one gets it, and the kernel ends the hold with the process
however the process ends (kill -9 included). A lock file left by a run that ended without releasing
it is therefore free: the next run takes it over, says whose it was, and writes its own name in it.
Two runs racing for such a stale lock are decided the same way (one flock). Released: the file is
removed, then closed.

Where flock is not available (not POSIX, or a file system without locks), O_EXCL alone decides:
a lock file left behind is never taken over, and the message says which process wrote it and to
delete it once that process is gone.
"""

import contextlib
import datetime
import json
import os
import shlex
import socket
import sys
import time

from lib.errors import BadInputError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

LOCK_NAME = "run.lock"
# how long a refused run re-reads a lock whose holder is being written, or is held by a process
# whose named holder has ended (its DataLoader workers, which inherit the lock, end within seconds)
SETTLE_S = 10.0
NEW_RUN_HINT = "wait for it to end, or give a fresh --output FOLDER"
RESUME_HINT = "--resume it once it has ended"


def pid_alive(pid):
    """Whether a process with this id exists (os.kill(pid, 0) sends no signal). Off POSIX, where
    os.kill would terminate the process, every pid counts as alive."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):  # no process can have this id
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def this_process():
    """What a lock says of its holder: pid, host, start time (UTC) and command line."""
    return dict(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        command=shlex.join([os.path.basename(sys.executable), *sys.argv]),
    )


def read_holder(path):
    """The holder a lock file names (a dict with at least an int pid), or None when the file is
    missing, empty (being written) or not a lock of this module."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return None
    return holder


def describe_holder(holder):
    """pid 123 on host h, started 2026-12-01 23:40:00 UTC: python train.py ... (one line)"""
    if holder is None:
        return "a process that has not yet written its name"
    command = " ".join(str(holder.get("command", "?")).split())
    command = command if len(command) <= 200 else command[:197] + "..."
    return (
        f"pid {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
        f"{command}"
    )


def _running(holder):
    """True unless the holder is a process of this host that no longer runs."""
    if holder is None or holder.get("host") != socket.gethostname():
        return True  # not written yet, or on another host: cannot tell, so it runs
    return pid_alive(holder["pid"])


def _same_file(fd, path):
    """Whether path still names the file open as fd (a releasing holder removes it)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _try_flock(fd):
    """True: this fd holds the lock now; False: another process holds it; None: no flock here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, ...: a file system without locks
        return None
    return True


class RunLock:
    """The lock of one output folder (which must exist); see the module docstring."""

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd = None

    @property
    def held(self):
        return self._fd is not None

    def _refuse(self, holder, hint, extra=""):
        return BadInputError(
            f"{self.folder} is in use by another run ({describe_holder(holder)}); {hint}{extra}"
        )

    def _open(self):
        """(fd, created): the lock file made with O_EXCL, else the one there; None when the one
        there went away before it could be opened."""
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        try:
            return os.open(self.path, flags), False
        except FileNotFoundError:
            return None

    def acquire(self, log=print, hint=NEW_RUN_HINT, settle_s=SETTLE_S):
        """Hold the folder, or raise BadInputError naming the folder and the process holding it,
        then `hint`. A stale lock (its holder ended without releasing it) is taken over with a
        line to `log`. Returns self."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        deadline = time.monotonic() + settle_s
        while True:
            opened = self._open()
            if opened is None:
                continue  # released between the two opens: try to create it again
            fd, created = opened
            got = _try_flock(fd)
            if got is None:  # exclusive creation alone decides
                if created:
                    break
                os.close(fd)
                holder = read_holder(self.path)
                gone = "" if _running(holder) else f" (pid {holder['pid']} no longer runs)"
                raise self._refuse(holder, hint, f"; if no run uses it, delete {self.path}{gone}")
            if got and _same_file(fd, self.path):
                break
            os.close(fd)
            if got:
                continue  # we locked a file its holder had just removed: start again
            holder = read_holder(self.path)
            if (holder is not None and _running(holder)) or time.monotonic() > deadline:
                raise self._refuse(holder, hint)
            time.sleep(0.05)  # the holder is writing its name, or the ended holder's children
        previous = None if created else read_holder(self.path)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(this_process()) + "\n").encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            self._fd = fd
            self.release()
            raise
        self._fd = fd
        if previous is not None:
            log(
                f"took over the lock {self.path} of {describe_holder(previous)}: that run ended "
                "without releasing it"
            )
        return self

    def release(self):
        """Remove the lock file (while still holding it), then close it. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
        finally:
            os.close(fd)

    def __enter__(self):
        return self if self.held else self.acquire()

    def __exit__(self, *exc):
        self.release()
