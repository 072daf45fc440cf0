"""`serialmon dashboard`: serve the Streamlit dashboard, bound to the loopback address by default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard_command)


def streamlit_command(host: str, port: int, *, open_browser: bool) -> list[str]:
    """Return the `streamlit run` command line that serves the dashboard on host:port.

    Usage statistics are off, the file watcher is off (the installed app does
    not change while it runs), the toolbar shows no developer options, and
    `--no-browser` runs Streamlit headless.
    """
    from serialmon.dashboard import APP_PATH

    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "false" if open_browser else "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
    ]


def dashboard_command(
    host: Optional[str] = typer.Option(
        None, "--host", help="Address to listen on (default: SERIALMON_DASHBOARD_HOST, 127.0.0.1: this machine only)."
    ),
    port: Optional[int] = typer.Option(
        None, "--port", "-p", min=1, max=65535, help="TCP port (default: SERIALMON_DASHBOARD_PORT, 8501)."
    ),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser (run headless)."),
) -> None:
    """Serve the dashboard until Ctrl-C; it reads the same settings (environment, .env) as this command."""
    from serialmon.cli import console, err_console, is_loopback
    from serialmon.config import get_settings
    from serialmon.errors import SerialmonError

    settings = get_settings()
    host = host or settings.dashboard_host
    port = port or settings.dashboard_port
    try:
        import streamlit  # noqa: F401 - only checks that it is installed
    except ImportError:
        raise SerialmonError(
            "Streamlit is not installed.", "Run `pip install serialmon` again to install it."
        ) from None

    _check_port_free(host, port)
    if not is_loopback(host):
        err_console.print(
            f"[yellow]Note:[/] listening on {host} lets other machines open the dashboard, which has no login "
            "and shows model names and the database's address (never its password)."
        )
    console.print(f"Dashboard at http://{host}:{port} (Ctrl-C stops).", highlight=False)

    # The child inherits the environment, so it reads the same settings as this process.
    process = subprocess.Popen(streamlit_command(host, port, open_browser=not no_browser), env=os.environ.copy())
    _forward_termination(process)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reaches the child too (same process group); give it time to shut down cleanly.
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            code = process.wait()
        console.print("Dashboard stopped.")
        return
    if code:
        raise typer.Exit(128 - code if code < 0 else code)  # a child ended by signal N exits 128 + N, as shells report


def _check_port_free(host: str, port: int) -> None:
    """Raise `SerialmonError` with the fix when host:port cannot be bound, before Streamlit starts."""
    from serialmon.errors import SerialmonError

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            if os.name != "nt":  # as servers do, so a port in TIME_WAIT counts as free (Windows' flag differs)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise SerialmonError(
            f"Cannot listen on {host}:{port}: {error.strerror or error}.", "Choose another --port or --host."
        ) from None


def _forward_termination(process: subprocess.Popen) -> None:
    """Stop the Streamlit child when this process is asked to stop (SIGTERM), so it never outlives us."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return

    def stop_child(signum: int, frame: object) -> None:
        process.terminate()

    signal.signal(signal.SIGTERM, stop_child)

