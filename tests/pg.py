"""A throwaway PostgreSQL server for tests: `from pg import postgres_server, postgres_url`.

Installs PostgreSQL with apt when its binaries are missing, runs `initdb` into a temp dir as the `postgres` user (the
server refuses to run as root), starts it on a free localhost port with its unix socket in that dir, and stops it at
the end of the session. Each test gets its own fresh database from `postgres_url`. Skips (with the reason) only when
the server cannot be installed or started.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

SERVICE_USER = "postgres"
PASSWORD_ROLE = "dialsum_secret"  # postgres_password_url's role: pg_hba.conf asks it for its password


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _install() -> str:
    """apt-get install postgresql; returns '' on success, else the reason."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    return "" if done.returncode == 0 else f"apt-get install postgresql failed: {done.stderr.strip()[-300:]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as_service_user(cmd: list[str]) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", SERVICE_USER, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_server():
    """(host, port, superuser) of a running server, for the whole test session."""
    bindir = _bin_dir()
    if bindir is None:
        reason = _install()
        bindir = _bin_dir()
        if bindir is None:
            pytest.skip(f"PostgreSQL not available: {reason or 'initdb not found after install'}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SERVICE_USER], check=True)
    root = Path(tempfile.mkdtemp(prefix="dialsum-pg-"))  # under /tmp, not pytest's root-only 0700 tree
    if os.geteuid() == 0:
        shutil.chown(root, SERVICE_USER, SERVICE_USER)
    data, port = root / "data", _free_port()
    init = _run_as_service_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                 "-E", "UTF8", "--no-sync", "--no-instructions"])
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=100")
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    start = _run_as_service_user([*pg_ctl, "-o", options, "-l", str(root / "server.log"), "start"])
    if start.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {(start.stderr + log).strip()[-300:]}")
    hba = data / "pg_hba.conf"  # the one role that must log in with its password; everyone else is trusted
    hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    _run_as_service_user([*pg_ctl, "reload"])
    try:
        yield "127.0.0.1", port, "postgres"
    finally:
        _run_as_service_user([*pg_ctl, "-m", "fast", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A SQLAlchemy URL of a new, empty database on the session's server."""
    import psycopg

    host, port, user = postgres_server
    name = f"dialsum_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_password_url(postgres_server):
    """A SQLAlchemy URL with a password in it, of a new database whose role the server asks for that password: a URL
    that reached a rank redacted (`:***@`) cannot connect."""
    import secrets

    import psycopg

    host, port, user = postgres_server
    name, password = f"dialsum_{uuid.uuid4().hex[:12]}", f"pw-{secrets.token_hex(8)}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
        conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}'")
        conn.execute(f'CREATE DATABASE "{name}" OWNER {PASSWORD_ROLE}')
    yield f"postgresql+psycopg://{PASSWORD_ROLE}:{password}@{host}:{port}/{name}"
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
