"""Issue 31: cluster.yaml's head setup and start commands, run for real on this machine.

The commands are cluster.yaml's as `ray up` resolves them (``prepare_config`` puts ``setup_commands`` before the
head's own) and run the way Ray runs them over SSH, ``bash --login -c -i "source ~/.bashrc; ... (CMD)"``, in a
temporary home, with the settings block edited as a user edits it: ports that are free here, no NFS source, a
local folder instead of the S3 bucket for MLflow's artifacts. Only what needs root, a cloud or the internet is
replaced, by the programs in tests/stand_ins (its README says what each one does): sudo, apt-get, mount,
systemd, uv and its installer (the environment is this machine's: nothing is downloaded, no CUDA torch), and
``ray stop`` / ``ray start --head`` (a head of the test's own on free ports, stopped by PID, never ``ray stop``;
its autoscaler runs Ray's fake provider). PostgreSQL is a real server of the test's own that asks MLflow's login
for its password; the MLflow basic-auth server, the token-mode Ray head, ``ray job submit`` and the study are real.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from servers import (Postgres, fake_autoscaling_config, free_port, gone, mentioning, postgres_available, process_tree,
                     stop_processes)
from test_cluster_config import AWS, ONPREM, settings  # noqa: F401  (its Ray version gate applies here too)

from ray.autoscaler._private.command_runner import _with_environment_variables, _with_interactive  # noqa: E402
from ray.autoscaler._private.util import prepare_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAND_INS = Path(__file__).parent / "stand_ins"

pytestmark = pytest.mark.skipif(not postgres_available() or shutil.which("curl") is None,
                                reason="needs PostgreSQL's programs (initdb, postgres, psql) and curl")


def user_settings(text: str, home: Path, mlflow_port: int) -> str:
    """The config with its settings block edited for this machine, as a user edits it."""
    edits = {"HT_BUCKET": "hardtruths-test-bucket", "HT_NFS_SOURCE": "", "HT_SHARED_DIR": str(home / "shared"),
             "HT_MLFLOW_PORT": str(mlflow_port),
             "HT_MLFLOW_ARTIFACTS": "${HT_SHARED_DIR}/hardtruths/mlflow-artifacts"}  # no S3 here
    for key, value in edits.items():
        text, found = re.subn(rf"'{key}=[^']*'", f"'{key}={value}'", text)
        assert found == (key != "HT_BUCKET" or "HT_BUCKET=" in text), key  # on premise: no bucket
    return text


def install_stand_ins(home: Path) -> Path:
    folder = home / "stand-ins"
    folder.mkdir()
    for path in STAND_INS.iterdir():
        if path.suffix == ".md":
            continue
        target = folder / path.stem
        if path.suffix == ".py":  # run by this interpreter, which has what the stand-in's environment has
            target.write_text(f"#!{sys.executable}\n" + path.read_text())
        else:
            shutil.copy(path, target)
        target.chmod(0o755)
    uv = home / ".local" / "bin" / "uv"  # where the uv installer puts it, so the setup does not run the installer
    uv.parent.mkdir(parents=True)
    (folder / "uv").rename(uv)
    return folder


@dataclass
class Head:
    home: Path
    env: dict
    config: dict
    mlflow_port: int
    postgres: Postgres

    def run(self, cmd: str, environment: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """One command as Ray's SSH runner runs it on the head (start commands get Ray's exported variables)."""
        if environment:
            cmd = _with_environment_variables(cmd, environment)
        (script,) = shlex.split(_with_interactive(cmd)[4])
        return subprocess.run(["bash", "--login", "-c", "-i", script], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)

    def ray_up(self) -> list[str]:
        """The head's part of `ray up` after its file mounts: setup commands, then start commands; the output."""
        outputs = []
        start_env = {"RAY_USAGE_STATS_ENABLED": 0}
        if self.config["provider"]["type"] != "local":  # as Ray's updater: the local provider detects resources
            start_env["RAY_OVERRIDE_RESOURCES"] = self.config["available_node_types"][self.config["head_node_type"]][
                "resources"]
        steps = [(c, None) for c in self.config["head_setup_commands"]]
        steps += [(c, start_env) for c in self.config["head_start_ray_commands"]]
        for cmd, environment in steps:
            done = self.run(cmd, environment)
            outputs.append(done.stdout + done.stderr)
            assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return outputs

    @property
    def mlflow_home(self) -> Path:
        return self.home / "mlflow"

    def login(self) -> tuple[str, str]:
        client = dict(line.split("=", 1) for line in (self.mlflow_home / "client.env").read_text().split())
        return client["MLFLOW_TRACKING_USERNAME"], client["MLFLOW_TRACKING_PASSWORD"]

    def secrets(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.mlflow_home.glob("*.env"))}

    def ray_head(self) -> dict:
        return json.loads((self.home / "ray-head.json").read_text())

    def mlflow(self, path: str, login: tuple[str, str] | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.mlflow_port}{path}")
        if login:
            request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, {}

    def stop(self) -> set[int]:
        """The MLflow unit and the Ray head (and the nodes its autoscaler added), by PID."""
        stopped: set[int] = set()
        unit = self.home / "mlflow.pid"
        if unit.exists():
            pid = int(unit.read_text())
            stopped |= stop_processes(process_tree(pid), timeout=10)
        head_file = self.home / "ray-head.json"
        if head_file.exists():
            head = json.loads(head_file.read_text())
            stopped |= stop_processes(process_tree(head["pid"]), timeout=30)
            stopped |= stop_processes(mentioning(head["temp_dir"]), timeout=10)
            shutil.rmtree(head["temp_dir"], ignore_errors=True)
        return stopped


@contextlib.contextmanager
def running_head(path: Path, home: Path):
    """A head after its first `ray up`: the edited config's setup and start commands, all run; then stopped."""
    stand_ins = install_stand_ins(home)
    # The file mounts: the project and Ray's token (written by `ray get-auth-token --generate`, rsynced with the
    # mode it has on the user's machine, here one that others could read).
    (home / "hardtruths").symlink_to(ROOT)
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(os.urandom(32).hex())
    (home / ".ray" / "auth_token").chmod(0o644)
    (home / ".bashrc").touch()
    # A login shell resets PATH (/etc/profile); ~/.profile puts the stand-ins first, as ~/.local/bin would be.
    (home / ".profile").write_text(f'PATH="{stand_ins}:$PATH"\n')
    mlflow_port = free_port()
    raw = yaml.safe_load(user_settings(path.read_text(), home, mlflow_port))
    if "available_node_types" in raw:
        # The study's CPU trials run on the head ("raise it to let CPU-only tasks run here", says cluster.yaml): a
        # node of Ray's fake provider shares this machine's temp dir with the head, and unpacking the job's
        # working dir there again pulls it from under the driver (its cwd is gone when Tune ends).
        raw["available_node_types"][raw["head_node_type"]]["resources"] = {"CPU": 2}
    config = prepare_config(raw)
    # What `ray up` writes on the head for its autoscaler: Ray's fake provider, with no worker type to add.
    (home / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(fake_autoscaling_config({}, head_cpus=2)))
    postgres = Postgres(passwords=True).start()
    env = {"HOME": str(home), "USER": "root", "LANG": "C.UTF-8", "TERM": "dumb",
           "PATH": f"{stand_ins}:/usr/local/bin:/usr/bin:/bin",
           # where this machine's PostgreSQL listens (a real head's is on libpq's default, port 5432)
           "PGHOST": "127.0.0.1", "PGPORT": str(postgres.port),
           # the project as `uv pip install -e ~/hardtruths` makes it importable: this checkout
           "PYTHONPATH": str(ROOT)}
    head = Head(home, env, config, mlflow_port, postgres)
    try:
        clock = time.monotonic()
        head.ray_up()
        print(f"\nfirst `ray up` of the {path.name} head: {time.monotonic() - clock:.0f} s")
        yield head
    finally:
        stopped = head.stop()
        stopped |= postgres.stop()
        assert gone(stopped), f"still running: {[p for p in stopped if not gone([p])]}"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    with running_head(AWS, tmp_path_factory.mktemp("head-home")) as head:
        yield head


def test_example_settings_are_refused(tmp_path):
    """The settings block as shipped: the first checks stop `ray up` with one sentence naming the setting."""
    config = prepare_config(yaml.safe_load(AWS.read_text()))
    head = Head(tmp_path, {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin"}, config, 0, None)
    (tmp_path / ".bashrc").touch()
    check = config["setup_commands"].index("~/hardtruths/cluster/check-settings")
    (tmp_path / "hardtruths").symlink_to(ROOT)
    for cmd in config["setup_commands"][:check]:
        assert head.run(cmd).returncode == 0
    refused = head.run(config["setup_commands"][check])
    assert refused.returncode == 1
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("hardtruths:")]
    assert line == ("hardtruths: HT_BUCKET is still the example value 'my-hardtruths-bucket'; set it in "
                    "metadata.hardtruths_settings at the top of the cluster config.")


def check_mlflow_behind_a_login(head: Head, extras: str) -> None:
    """What the first `ray up` must leave on a head (see test_head_setup_starts_mlflow_behind_a_login)."""
    username, password = head.login()
    status, _ = head.mlflow("/api/2.0/mlflow/experiments/search?max_results=1")
    assert status == 401, "MLflow answered without a login"
    status, body = head.mlflow("/api/2.0/mlflow/experiments/search?max_results=1", (username, "wrong"))
    assert status == 401
    status, body = head.mlflow("/api/2.0/mlflow/experiments/search?max_results=1", (username, password))
    assert status == 200 and "experiments" in body
    print(f"MLflow without a login: 401; with the generated one: {status}")

    # secrets: generated on the head, owner-only, never on a command line (the stand-ins log every argv)
    assert stat.S_IMODE(head.mlflow_home.stat().st_mode) == 0o700
    for name in ("server.env", "client.env"):
        assert stat.S_IMODE((head.mlflow_home / name).stat().st_mode) == 0o600, name
    server = dict(line.split("=", 1) for line in (head.mlflow_home / "server.env").read_text().split())
    assert set(server) == {"PGPASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_USERNAME",
                           "MLFLOW_AUTH_ADMIN_PASSWORD"}
    secrets = [v for k, v in server.items() if k != "MLFLOW_AUTH_ADMIN_USERNAME"]
    assert all(len(s) >= 32 for s in secrets) and len(set(secrets)) == 3
    argv_log = (head.home / "stand-ins.log").read_text()
    (unit,) = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid == int((head.home / "mlflow.pid").read_text())]
    server_tree = [" ".join(p.cmdline()) for p in [unit, *unit.children(recursive=True)]]
    for secret in secrets:
        assert secret not in argv_log and not any(secret in c for c in server_tree), "a secret on a command line"
    assert any("mlflow server --app-name basic-auth" in c for c in server_tree), server_tree
    assert "--host 127.0.0.1" in " ".join(server_tree), "MLflow listens on the head's loopback"
    assert stat.S_IMODE((head.home / ".ray" / "auth_token").stat().st_mode) == 0o600
    assert stat.S_IMODE((head.home / "hardtruths.env").stat().st_mode) == 0o600
    assert "MLFLOW_TRACKING_PASSWORD" not in (head.home / "hardtruths.env").read_text(), \
        "the login is in client.env on the head only, not in the settings every node gets"

    # what was installed: the project with the server's extras (Flask-WTF among them), from constraints.txt
    installs = [line for line in argv_log.splitlines() if line.startswith("uv pip install")]
    assert any(line.endswith(f"-e {head.home}/hardtruths[{extras}]") for line in installs), installs
    assert "ray stop" in argv_log and "ray start --head" in argv_log
    # the database login is the generated one: PostgreSQL asks for it
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=head.postgres.port, user="mlflow", dbname="mlflow", password="x")
    psycopg2.connect(host="127.0.0.1", port=head.postgres.port, user="mlflow", dbname="mlflow",
                     password=server["PGPASSWORD"]).close()


@pytest.mark.slow
def test_head_setup_starts_mlflow_behind_a_login(head):
    check_mlflow_behind_a_login(head, "aws,server")


@pytest.mark.slow
def test_onprem_head_setup_starts_mlflow_behind_a_login(tmp_path_factory):
    """cluster-onprem.yaml's head the same way, twice: MLflow behind the generated login, nothing regenerated."""
    with running_head(ONPREM, tmp_path_factory.mktemp("onprem-home")) as head:
        check_mlflow_behind_a_login(head, "server")
        before = head.secrets()
        head.ray_up()
        assert head.secrets() == before
        assert head.mlflow("/api/2.0/mlflow/experiments/search?max_results=1", head.login())[0] == 200


@pytest.mark.slow
def test_second_ray_up_regenerates_nothing(head):
    """`ray up` again (after a code change): the same secrets, the token made private again after the rsync, the
    server restarted and still taking the same login."""
    before = head.secrets()
    (head.home / ".ray" / "auth_token").chmod(0o644)  # rsync brings the user's mode back
    outputs = head.ray_up()
    assert head.secrets() == before
    assert not any("generated MLflow's passwords" in out for out in outputs)
    assert stat.S_IMODE((head.home / ".ray" / "auth_token").stat().st_mode) == 0o600
    assert head.mlflow("/api/2.0/mlflow/experiments/search?max_results=1", head.login())[0] == 200
    assert head.mlflow("/api/2.0/mlflow/experiments/search?max_results=1")[0] == 401


@pytest.mark.slow
def test_rotating_the_password(head):
    """cluster/mlflow-rotate: a new generated password in the user store and both environment files (still 600);
    the old one is refused at once; the new one is on no command line."""
    old = head.login()
    rotated = head.run("~/hardtruths/cluster/mlflow-rotate")
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    new = head.login()
    assert new[0] == old[0] and new[1] != old[1] and len(new[1]) >= 32
    assert head.mlflow("/api/2.0/mlflow/experiments/search?max_results=1", old)[0] == 401
    assert head.mlflow("/api/2.0/mlflow/experiments/search?max_results=1", new)[0] == 200
    server = dict(line.split("=", 1) for line in (head.mlflow_home / "server.env").read_text().split())
    assert server["MLFLOW_AUTH_ADMIN_PASSWORD"] == new[1], "a restored backup starts with the current one"
    assert {stat.S_IMODE(p.stat().st_mode) for p in head.mlflow_home.glob("*.env")} == {0o600}
    assert new[1] not in (head.home / "stand-ins.log").read_text()


def readme_submission() -> str:
    """The README's `ray job submit` command, as written: its lines, for a shell to read as a user's shell would."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("    RAY_ADDRESS=http://127.0.0.1:8265"):].splitlines()
    end = next(i for i, line in enumerate(block) if line.rstrip().endswith("'"))
    return "\n".join(line[4:] for line in block[:end + 1])


@pytest.mark.slow
def test_study_submitted_as_the_readme_says_logs_to_mlflow(head):
    """The README's command against the test's head: only the forwarded dashboard's address (the test's head's)
    and the study's size (the smoke space on the staged Fashion-MNIST, one tiny trial) differ."""
    staged = head.run("~/hardtruths/cluster/stage-data fashion-mnist /usr/share/datasets/fashion-mnist")
    assert staged.returncode == 0, staged.stderr[-3000:]
    print(staged.stdout.strip().splitlines()[-1])
    staged = head.home / "shared" / "hardtruths" / "data" / "fashion-mnist"
    staged_files = {p.name.removesuffix(".gz") for p in staged.iterdir()}
    assert {"train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"} <= staged_files, staged_files

    command = readme_submission()
    study = re.search(r"--space paper --preset cifar10 --gpus-per-trial 0\.25", command)
    assert study, command
    command = command.replace(study.group(0), "--space smoke --dataset fashion-mnist --selectors random --ipc 1 "
                                               "--regimes hl --seeds 1 --budgets 20 --no-report")
    command = command.replace("http://127.0.0.1:8265", head.ray_head()["dashboard"])
    assert "--data-root $HT_DATA_DIR" in command and "RAY_AUTH_MODE=token" in command
    # the user's machine: the token file that `ray up` synced, the pinned Ray, the repository as working dir
    laptop = {"HOME": str(head.home), "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
              "LANG": "C.UTF-8"}
    clock = time.monotonic()
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=laptop, capture_output=True, text=True,
                          timeout=1500)
    print(f"ray job submit: exit {done.returncode} after {time.monotonic() - clock:.0f} s")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout, done.stdout[-3000:]

    login = head.login()
    status, found = head.mlflow("/api/2.0/mlflow/experiments/get-by-name?experiment_name=hardtruths", login)
    assert status == 200, status
    experiment = found["experiment"]["experiment_id"]
    request = json.dumps({"experiment_ids": [experiment], "max_results": 100}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{head.mlflow_port}/api/2.0/mlflow/runs/search", data=request,
                                 headers={"Content-Type": "application/json", "Authorization": "Basic " +
                                          base64.b64encode(":".join(login).encode()).decode()})
    with urllib.request.urlopen(req, timeout=30) as r:
        runs = json.loads(r.read())["runs"]
    children = [r for r in runs if any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
    finished = [r for r in children if r["info"]["status"] == "FINISHED"]
    print(f"MLflow on the head holds {len(runs)} run(s): {len(finished)} finished trial(s), e.g. "
          f"{finished[0]['info']['run_name'] if finished else None}")
    assert len(finished) == 1, [(r["info"]["run_name"], r["info"]["status"]) for r in runs]


@pytest.mark.slow
def test_mlflow_backup_comes_back_on_a_new_head(head):
    """cluster/mlflow-backup before `ray down`; a new head (no MLflow home, no database) takes the secrets, users
    and runs back from the shared file system at its first setup."""
    import mlflow

    login = head.login()
    os.environ.update(MLFLOW_TRACKING_USERNAME=login[0], MLFLOW_TRACKING_PASSWORD=login[1])
    try:
        client = mlflow.MlflowClient(f"http://127.0.0.1:{head.mlflow_port}")
        experiment = client.create_experiment(f"backup-{os.getpid()}")
        run = client.create_run(experiment, run_name="kept").info.run_id
        client.log_metric(run, "acc", 0.5)
    finally:
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(var, None)
    saved = head.run("~/hardtruths/cluster/mlflow-backup")
    assert saved.returncode == 0, saved.stderr[-3000:]
    backup = head.home / "shared" / "hardtruths" / "mlflow-backup"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    before = head.secrets()

    # `ray down` and a new head: the head's disk (MLflow home, PostgreSQL's database and login) is gone
    head.run("sudo systemctl stop mlflow")
    shutil.rmtree(head.mlflow_home)
    dropped = head.run("cd /tmp && sudo -u postgres psql -c 'DROP DATABASE mlflow' -c 'DROP ROLE mlflow'")
    assert dropped.returncode == 0, dropped.stderr
    outputs = head.ray_up()
    assert any("restoring MLflow's secrets, users and runs" in out for out in outputs)
    assert head.secrets() == before
    status, got = head.mlflow(f"/api/2.0/mlflow/runs/get?run_id={run}", head.login())
    assert status == 200 and got["run"]["data"]["metrics"][0]["value"] == 0.5
