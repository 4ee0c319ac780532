"""Real servers for the reliability and multi-node tests, each started as its own process and stopped by PID.

- :func:`postgres`: a throw-away PostgreSQL cluster (``initdb`` + ``postgres``) in a fresh folder under /tmp,
  listening on 127.0.0.1 and a free port. PostgreSQL refuses to run as root, and the tests run as root, so
  both programs run as the unprivileged ``postgres`` user that Debian's ``postgresql`` package creates (else
  ``nobody``): ``subprocess.Popen(user=..., group=..., extra_groups=[])`` drops privileges before exec, so the
  PID we hold is the postmaster's own.
- :class:`MlflowServer`: ``mlflow server`` on 127.0.0.1 and a free port, over a SQLite file or a PostgreSQL
  URI; it can be stopped and started again on the same port and store (the restart test).
- :class:`RayNode`: ``ray start --block`` (head or worker) with its own ``--temp-dir`` and free ports, so it
  never meets another Ray on the machine (``ray start`` without ``--temp-dir`` would register itself as the
  machine's "current cluster", which a plain ``ray.init()`` elsewhere would then join).

Every stop sends SIGTERM (SIGINT for PostgreSQL: its "fast" shutdown) to the snapshot of the process and all
its descendants, waits, then SIGKILLs what is left, and returns every PID it stopped so a test can assert
they are gone (:func:`gone`). Nothing here calls ``ray stop``: that stops every Ray on the machine,
other people's included.

Ray nodes listen on 127.0.0.2, not 127.0.0.1: Ray rewrites the names it treats as "localhost" (127.0.0.1,
localhost, ::1) to the machine's interface address before it connects, so a cluster started on 127.0.0.1 is
dialled on that other address. The rest of 127.0.0.0/8 is loopback too and Ray leaves it alone, so with
``--node-ip-address 127.0.0.2`` every Ray connection of these tests stays on the loopback interface.
"""
from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

RAY_HOST = "127.0.0.2"  # loopback, and not one of the names Ray rewrites (see above)


# ------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}\n{tail(log)}")
        time.sleep(every)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s\n{tail(log)}")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, already dead and waiting to be reaped, counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pids) -> bool:
    return not [p for p in pids if alive(p)]


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant, parent first."""
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def mentioning(text: str) -> list[psutil.Process]:
    """Processes whose command line contains ``text`` (e.g. a Ray temp dir), with their descendants."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and text in " ".join(p.info["cmdline"] or []):
                for q in [p] + p.children(recursive=True):
                    found[q.pid] = q
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def stop_processes(procs: list[psutil.Process], sig: int = signal.SIGTERM, timeout: float = 30.0) -> set[int]:
    """Signal every process, wait, SIGKILL the survivors; return their PIDs."""
    pids = {p.pid for p in procs}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    _, survivors = psutil.wait_procs(procs, timeout=timeout)
    for p in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(survivors, timeout=10)
    return pids


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Service:
    """One long-running process started by a test (and its descendants)."""

    name = "service"
    stop_signal = signal.SIGTERM

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None
        self.pids: set[int] = set()  # every PID this service ever stopped

    def spawn(self, cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, **kwargs)
        self.pids.add(self.proc.pid)
        return self.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> set[int]:
        if self.proc is None:
            return set()
        stopped = stop_processes(process_tree(self.proc.pid), self.stop_signal, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.pids |= stopped
        self.proc = None
        return stopped


# ------------------------------------------------------------------ PostgreSQL

def postgres_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def postgres_available() -> bool:
    try:
        import psycopg2  # noqa: F401  (MLflow's PostgreSQL driver)
    except ImportError:
        return False
    return bool(postgres_binary("initdb") and postgres_binary("postgres"))


class Postgres(Service):
    """A private PostgreSQL cluster on 127.0.0.1:<free port> holding one database, ``mlflow``."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast shutdown": roll back clients and stop

    def __init__(self, passwords: bool = False):
        """``passwords``: TCP logins other than the superuser ``postgres`` need their password (as on a real
        server); by default every login is trusted."""
        super().__init__()
        self.port, self.passwords = free_port(), passwords
        user = next((u for u in ("postgres", "nobody") if self._user(u)), None)
        if user is None:
            raise RuntimeError("no unprivileged user (postgres or nobody) to run PostgreSQL as")
        pw = pwd.getpwnam(user)
        self.as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []} if os.geteuid() == 0 else {}
        # A folder directly under /tmp: the pytest tmp dirs are root-only (0700) and the user could not enter them.
        self.root = Path(tempfile.mkdtemp(prefix="htpg-", dir="/tmp"))
        if os.geteuid() == 0:
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.root), "LC_ALL": "C.UTF-8"}

    @staticmethod
    def _user(name: str) -> bool:
        try:
            pwd.getpwnam(name)
            return True
        except KeyError:
            return False

    @property
    def uri(self) -> str:
        # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not psycopg2.
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def start(self, timeout: float = 90.0) -> "Postgres":
        data = self.root / "data"
        subprocess.run([postgres_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync", "--no-instructions"], cwd=self.root, env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, **self.as_user)
        if self.passwords:
            with open(data / "pg_hba.conf", "w") as hba:
                hba.write("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                          "host all all 127.0.0.1/32 scram-sha-256\n")
        self.spawn([postgres_binary("postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                    "-k", str(self.root), "-F", "-c", "max_connections=50"],
                   self.root / "postgres.log", cwd=self.root, env=self.env, **self.as_user)
        try:
            wait_for(self._ready, timeout, "PostgreSQL", self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        return self

    def _ready(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def stop(self, timeout: float = 30.0) -> set[int]:
        try:
            return super().stop(timeout)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ MLflow

class MlflowServer(Service):
    """``mlflow server`` on 127.0.0.1; :meth:`start` again after :meth:`stop` reuses the port and the store."""

    name = "mlflow"

    def __init__(self, backend_uri: str, folder: Path, port: int | None = None, workers: int = 1):
        # One worker: every extra one is another Python process importing MLflow (tens of seconds on 2 busy
        # cores); requests are still served concurrently, by uvicorn's thread pool.
        super().__init__()
        self.backend_uri, self.folder, self.workers = backend_uri, Path(folder), workers
        self.port = port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 120.0) -> "MlflowServer":
        wait_for(lambda: not port_open(self.port), 30, f"port {self.port} to be free")
        env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"}
        self.spawn([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
                    "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
                    "--port", str(self.port), "--workers", str(self.workers)],
                   self.folder / "mlflow-server.log", cwd=self.folder, env=env)
        try:
                wait_for(self.healthy, timeout, "the MLflow server", self.proc, self.log, every=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> set[int]:
        """SIGTERM, then SIGKILL after ``timeout``: uvicorn's graceful shutdown waits for idle keep-alive
        connections (every MlflowClient holds some), so it would otherwise wait for the client to go away."""
        return super().stop(timeout)


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


# ------------------------------------------------------------------ Ray

def short_tmp(prefix: str) -> Path:
    """A short folder under /tmp: Ray's unix socket paths must stay under about 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class RayNode(Service):
    """``ray start --block`` as a head (``address=None``) or as a worker joining ``address``.

    A head given an ``autoscaling`` config (a dict, see :func:`fake_autoscaling_config`) runs Ray's own
    autoscaler over Ray's fake multi-node provider: it starts and stops real raylets on this machine as
    demand asks; they live in the head's temp dir and process group, so stopping the head's process tree
    stops them too. ``env`` adds to (or, with None values, removes from) the nodes' environment, e.g. token
    authentication (``RAY_AUTH_MODE=token``) instead of the suite's ``disabled``.
    """

    name = "ray"

    def __init__(self, temp_dir: Path, num_cpus: int = 1, resources: dict | None = None,
                 address: str | None = None, autoscaling: dict | None = None, env: dict | None = None):
        super().__init__()
        self.temp_dir, self.num_cpus, self.resources, self.join = Path(temp_dir), num_cpus, resources, address
        self.autoscaling, self.env = autoscaling, env or {}
        self.port = free_port()
        self.dashboard_port = free_port()

    @property
    def address(self) -> str:
        return self.join or f"{RAY_HOST}:{self.port}"

    def start(self, timeout: float = 120.0) -> "RayNode":
        cmd = ["ray", "start", "--block", "--disable-usage-stats", "--node-ip-address", RAY_HOST,
               "--num-cpus", str(self.num_cpus), "--num-gpus", "0", "--temp-dir", str(self.temp_dir),
               "--object-store-memory", str(100 * 1024 ** 2),
               "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port())]
        if self.resources:
            cmd += ["--resources", json.dumps(self.resources)]
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **self.env}
        env = {k: v for k, v in env.items() if v is not None and k != "RAY_ADDRESS"}
        if self.join is None:
            cmd += ["--head", "--port", str(self.port), "--dashboard-host", RAY_HOST,
                    "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port()),
                    "--include-dashboard", "true"]
        else:
            cmd += ["--address", self.join]
        if self.autoscaling is not None:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            config = self.temp_dir / "autoscaling.json"  # YAML is a superset of JSON
            config.write_text(json.dumps({**self.autoscaling, "provider": {
                **self.autoscaling["provider"], "gcs_address": f"{RAY_HOST}:{self.port}"}}))
            cmd += ["--autoscaling-config", str(config)]
            env["RAY_FAKE_CLUSTER"] = "1"
        name = "head" if self.join is None else f"worker-{self.port}"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.spawn(cmd, self.temp_dir / f"{name}.log", env=env)  # removed with the temp dir
        try:
            wait_for(lambda: "Ray runtime started" in tail(self.log, 400), timeout, f"ray start ({name})",
                     self.proc, self.log, every=0.5)
        except BaseException:
            self.stop()
            raise
        return self


# The fake provider tags the head it finds with this type; under another name the autoscaler would take the
# head for a node of an unknown type and keep launching and removing "head" workers.
HEAD_TYPE = "ray.head.default"


def fake_autoscaling_config(worker_types: dict, head_cpus: int = 0, idle_timeout_s: float = 15) -> dict:
    """An autoscaling config for Ray's fake multi-node provider (the ``example.yaml`` it refers to is not in the
    wheel): a head with ``head_cpus`` CPUs and the given worker types, e.g. ``{"cpu": {"resources": {"CPU": 1},
    "max_workers": 3}}``; node types may declare ``GPU`` without a GPU behind it."""
    types = {HEAD_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}}
    for name, spec in worker_types.items():
        types[name] = {"node_config": {}, "min_workers": 0, **spec,
                       "resources": {"object_store_memory": 100 * 1024 ** 2, **spec["resources"]}}
    empty = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
             "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
             "rsync_filter")
    return {"cluster_name": "hardtruths-fake", "max_workers": sum(t["max_workers"] for t in worker_types.values()),
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_s / 60,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "auth": {}, "docker": {}, "head_node_type": HEAD_TYPE, "available_node_types": types, "file_mounts": {},
            "file_mounts_sync_continuously": False, **{k: [] for k in empty}}


def ray_nodes(address: str) -> list[dict]:
    """Alive nodes of the cluster at ``address``, read straight from its GCS (no driver, no ray.init)."""
    from ray._raylet import GcsClient

    infos = GcsClient(address=address).get_all_node_info(timeout=10)
    return [{"node_id": i.node_id.hex() if hasattr(i.node_id, "hex") else str(i.node_id),
             "alive": i.state == 0, "resources": dict(i.resources_total)} for i in infos.values()]
