"""Fast job start-up for local runs: a fork server that has imported torch and the suite once.

A job of the pipeline is ``python -m benchmarks.cli <stage> ...``; most of its start-up is importing torch
and the suite (about 1.5 s per job on a 2-core CPU, more than the work of many jobs). When the Snakemake
head runs locally it starts this server (the Snakefile: ``start_for_local_run``), which imports everything
once and then waits on a Unix socket. A job's CLI then connects (``run_through_server``), hands over its
arguments, environment, working directory and its stdin/stdout/stderr (file descriptors, so the job's log
is written as before), and the server forks a child that runs the stage exactly as the job would have.
The job process waits for the child's exit status and returns it; a signal it receives (Snakemake stopping
a job) is passed on to the child, and if the job process dies the server kills the child. The server is
single-threaded (select and waitpid), so forking is safe, and it never runs a tensor operation, so no
thread pool or CUDA context exists before a fork.

Where it does not apply, the job simply runs itself, as before: no server (a cluster executor, or
``AMORTBENCH_FORK_SERVER=0``), a job inside a batch system's allocation (``SLURM_JOB_ID`` and friends:
resources are the scheduler's business), another Python executable (a conda environment of the rule), or
any failure to connect. The server exits with the head: when the head process dies (the kernel tells it:
PR_SET_PDEATHSIG), when the head's ``onsuccess``/``onerror`` asks it to, or after an hour without a job.
"""
from __future__ import annotations

import array
import ctypes
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ENV = "AMORTBENCH_FORK_SERVER"  # the socket path, set by the head for its jobs; "0" turns the server off
BATCH_SYSTEMS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID", "KUBERNETES_SERVICE_HOST")
PRELOAD = ("torch", "numpy", "pandas", "pyarrow.parquet", "matplotlib.pyplot", "scipy.stats", "methods",
           "benchmarks.cli", "benchmarks.train", "benchmarks.evaluate", "benchmarks.timing", "benchmarks.gaps",
           "benchmarks.report.build", "benchmarks.report.bundle", "torch._dynamo")
IDLE_SECONDS = 3600
FOLDER_PREFIX = "amortbench-fork-"


# --------------------------------------------------------------------------------------------------
# the job's side


STARTUP_WAIT = 15.0  # seconds a job waits for a server that is still importing


def usable() -> str | None:
    """The server's socket if this process should run its job through it, else None. A job that starts
    while the server is still importing waits for it (a marker file says so), since that is quicker than
    importing everything itself."""
    path = os.environ.get(ENV)
    if not path or path == "0" or any(v in os.environ for v in BATCH_SYSTEMS):
        return None
    deadline = time.time() + STARTUP_WAIT
    while not os.path.exists(path) and os.path.exists(path + ".starting") and time.time() < deadline:
        time.sleep(0.02)
    return path if os.path.exists(path) else None


def run_through_server(module: str, argv: list[str], started: float) -> int | None:
    """Run ``module.main(argv)`` (the job's command) in a child of the server, with ``module.STARTED`` set to
    `started`; its exit status, or None to run it here."""
    path = usable()
    if path is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = json.dumps({"module": module, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                              "started": started, "executable": os.path.realpath(sys.executable)}).encode()
        fds = array.array("i", [0, 1, 2])
        sock.sendmsg([len(request).to_bytes(8, "big") + request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        reply = _read_message(sock)
    except OSError:
        sock.close()
        return None
    if reply is None or "refused" in reply:
        sock.close()
        return None
    child = reply["pid"]

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        done = _read_message(sock)
    except OSError:
        done = None
    sock.close()
    if done is None:  # the server went away: the child is gone with it
        print("amortbench: the fork server stopped while this job ran", file=sys.stderr)
        return 1
    code = int(done["exit"])
    if code < 0:  # killed by a signal: say which (SIGKILL is often the kernel's out-of-memory killer)
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (the kernel's out-of-memory killer sends it: see dmesg)" if -code == signal.SIGKILL else ""
        print(f"amortbench: the job was killed by {name}{hint}", file=sys.stderr)
        return 128 - code  # the shell's convention for a process killed by a signal
    return code


def _read_message(sock: socket.socket) -> dict | None:
    header = _read_exactly(sock, 8)
    if header is None:
        return None
    body = _read_exactly(sock, int.from_bytes(header, "big"))
    return None if body is None else json.loads(body)


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _send(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message).encode()
    sock.sendall(len(body).to_bytes(8, "big") + body)


# --------------------------------------------------------------------------------------------------
# the head's side


def start_for_local_run(root: str) -> str | None:
    """Start a server for this head process (a Snakefile calls this) and export its socket to the jobs;
    returns the socket path, or None if the server is off or did not come up."""
    if os.environ.get(ENV) == "0":
        return None
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
    path = str(folder / "socket")
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(ENV, None)
    Path(path + ".starting").touch()
    subprocess.Popen([sys.executable, "-m", "benchmarks.forkserver", path, str(os.getpid())], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"),
                     start_new_session=True)
    os.environ[ENV] = path  # the jobs inherit it; they fall back to running themselves until it is up
    return path


def stop(path: str | None) -> None:
    if not path:
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        body = json.dumps({"shutdown": True}).encode()
        sock.sendall(len(body).to_bytes(8, "big") + body)
    except OSError:
        pass
    finally:
        sock.close()


# --------------------------------------------------------------------------------------------------
# the server


def _die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `signum` to this process when its parent dies (PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signum)
    except (OSError, AttributeError):
        pass


class Server:
    def __init__(self, path: str, head: int):
        self.path, self.head = path, head
        self.children: dict[int, socket.socket] = {}  # child pid -> its job's connection
        self.selector = selectors.DefaultSelector()
        self.last_job = time.time()
        self.running = True

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = self.path + ".tmp"
        listener.bind(tmp)
        listener.listen(64)
        os.replace(tmp, self.path)  # the socket appears only when the server is ready
        _unlink(self.path + ".starting")
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        while self.running:
            for key, _ in self.selector.select(timeout=0.05):
                if key.data == "listen":
                    self._accept(listener)
                else:  # a job's connection became readable: it closed, i.e. the job process died
                    self._job_gone(key.fileobj, key.data)
            self._reap()
            idle = not self.children and time.time() - self.last_job > IDLE_SECONDS
            if idle or not _alive(self.head):  # a dead head takes its running jobs with it
                self.running = False
        self._stop()

    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        try:
            header = conn.recv(8, socket.MSG_PEEK)
            if len(header) < 8:
                conn.close()
                return
            size = int.from_bytes(header, "big")
            message, ancillary, _, _ = conn.recvmsg(8 + size, socket.CMSG_LEN(3 * array.array("i").itemsize))
            while len(message) < 8 + size:
                message += conn.recv(8 + size - len(message))
            request = json.loads(message[8:])
        except (OSError, ValueError):
            conn.close()
            return
        if request.get("shutdown"):
            conn.close()
            self.running = False
            return
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if request.get("executable") != os.path.realpath(sys.executable) or len(fds) != 3:
            _send(conn, {"refused": "another Python environment"})
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        self.last_job = time.time()
        server = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: become the job (closing the server's sockets, so that only the server
            for key in list(self.selector.get_map().values()):  # holds the other jobs' connections)
                key.fileobj.close()
            conn.close()
            os._exit(_run_job(request, list(fds), server))
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        _send(conn, {"pid": pid})

    def _job_gone(self, conn: socket.socket, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.selector.unregister(conn)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            try:
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            except OSError:
                pass
            conn.close()

    def _stop(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _unlink(self.path)
        _unlink(self.path + ".starting")
        _remove_own_folder(self.path)
        self.running = False
        if self.children:
            time.sleep(0.5)
            for pid in list(self.children):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        os._exit(0)


def _remove_own_folder(path: str) -> None:
    """The folder start_for_local_run made for the socket and the server's log (left when the server failed
    to start, so that the log can be read)."""
    folder = Path(path).parent
    if folder.name.startswith(FOLDER_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_job(request: dict, fds: list[int], server: int) -> int:
    """In the forked child: take over the job's stdio, environment and directory, then run its command."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    _die_with_parent(signal.SIGKILL)  # a server killed outright takes its jobs with it
    if os.getppid() != server:  # ... also one that died before the line above
        return 1
    os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    command = importlib.import_module(request["module"])  # preloaded by the server: a lookup
    command.STARTED = request["started"]
    command.FORKED = True
    sys.argv = [request["module"], *request["argv"]]
    try:
        code = command.main(request["argv"])
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 - report like the interpreter would, then leave
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(argv: list[str]) -> None:
    path, head = argv[0], int(argv[1])
    _die_with_parent()
    if not _alive(head):
        return
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no BLAS thread pool before a fork
    try:
        for module in PRELOAD:
            importlib.import_module(module)
    finally:  # a server that cannot start must not keep jobs waiting
        if not os.path.exists(path):
            _unlink(path + ".starting")
    Server(path, head).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
