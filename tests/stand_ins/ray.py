"""Stand-in for the `ray` command of the cluster's start commands.

``ray stop`` is not run (it stops every Ray on the machine, other people's included): the stand-in stops the head it
started itself, by PID, with every process that runs in that head's temp dir. ``ray start --head`` starts a
real head, but with its own temp dir and free ports on 127.0.0.2 (so it never meets another Ray here), under
``--block`` in a session of its own, and writes its PID, address and dashboard port to ``$HOME/ray-head.json``;
the autoscaling config it is given is Ray's fake multi-node provider's (written by the test where `ray up` puts
the real one), so the autoscaler adds real raylets on this machine. Every other command is the real `ray`.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

HOST = "127.0.0.2"
REAL = [sys.executable, "-m", "ray.scripts.scripts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(*words: str) -> None:
    with open(Path.home() / "stand-ins.log", "a") as f:
        f.write(" ".join(["ray", *words]) + "\n")


def stop_head() -> None:
    record = Path.home() / "ray-head.json"
    if not record.exists():
        return
    head = json.loads(record.read_text())
    procs = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid == head["pid"] or head["temp_dir"] in " ".join(p.info["cmdline"] or []):
                procs.update({q.pid: q for q in [p, *p.children(recursive=True)]})
        except psutil.NoSuchProcess:
            continue
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=30)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    shutil.rmtree(head["temp_dir"], ignore_errors=True)
    record.unlink()
    print(f"ray stand-in: stopped the head it had started ({len(procs)} processes), not every Ray here")


def start_head(args: list[str]) -> None:
    options = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="htsetup-", dir="/tmp"))  # short: Ray's socket paths have a limit
    config = yaml.safe_load(Path(os.path.expanduser(options["--autoscaling-config"])).read_text())
    config["provider"]["gcs_address"] = f"{HOST}:{port}"
    (temp / "autoscaling.json").write_text(json.dumps(config))
    dashboard = free_port()
    cmd = REAL + ["start", "--head", "--block", "--disable-usage-stats", "--node-ip-address", HOST,
                  "--port", str(port), "--temp-dir", str(temp), "--num-gpus", "0",
                  "--object-store-memory", str(100 * 1024 ** 2), "--dashboard-host", HOST,
                  "--dashboard-port", str(dashboard), "--include-dashboard", "true",
                  "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                  "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
                  "--autoscaling-config", str(temp / "autoscaling.json")]
    log_file = temp / "head.log"
    # Ray's updater exports the head's resources as RAY_OVERRIDE_RESOURCES; given as flags here instead, since the
    # fake provider's nodes start from this environment and would take the head's {CPU: 0} for theirs.
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1"}
    override = json.loads(env.pop("RAY_OVERRIDE_RESOURCES", "{}"))
    if "CPU" in override:
        cmd += ["--num-cpus", str(int(override.pop("CPU")))]
    override.pop("GPU", None)  # none here: --num-gpus 0
    if override:
        cmd += ["--resources", json.dumps(override)]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    (Path.home() / "ray-head.json").write_text(json.dumps(
        {"pid": proc.pid, "address": f"{HOST}:{port}", "dashboard": f"http://{HOST}:{dashboard}",
         "temp_dir": str(temp)}))
    for _ in range(600):
        if "Ray runtime started" in log_file.read_text(errors="replace"):
            print(f"ray stand-in: head started at {HOST}:{port}, dashboard on port {dashboard}")
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    sys.exit(f"ray stand-in: the head did not start\n{log_file.read_text(errors='replace')[-3000:]}")


def main(argv: list[str]) -> None:
    log(*argv)
    if argv[:1] == ["stop"]:
        stop_head()
    elif argv[:2] == ["start", "--head"]:
        start_head(argv[2:])
    else:
        os.execv(sys.executable, REAL + argv)


main(sys.argv[1:])
