"""cluster.yaml and cluster-onprem.yaml pass Ray's own cluster-config validation, offline.

What `ray up` does with a config (ray/autoscaler/_private/commands.py, ray 2.60.0):
  yaml.safe_load -> _bootstrap_config:
    prepare_config    fill in the provider's defaults.yaml, merge setup commands, per-type min/max
                      workers; for the local provider, prepare_local builds the one node type from
                      head_ip/worker_ips. Reads files shipped with Ray only: no network.
    provider.fillout_available_node_types_resources
                      AWS: DescribeInstanceTypes (network, credentials) to fill missing `resources`;
                      local: nothing.
    validate_config   JSON schema (ray-schema.json) plus cross-field checks: head_node_type is one
                      of available_node_types, sum of min_workers <= max_workers. No network.
    provider.bootstrap_config
                      AWS: IAM role/profile, key pair, subnets, security groups (network,
                      credentials), with a few offline checks first; local: nothing.

So the on-premise file goes through the real _bootstrap_config end to end, and the AWS file through
prepare_config + validate_config (the node types state their `resources`, so nothing is left for
the autodetection) followed by the offline parts of bootstrap_aws (check_legacy_fields,
_configure_key_pair, which with `auth.ssh_private_key` set only checks every node type names its
KeyName, and _check_ami). Sockets are disabled for every test here, so none of this can reach AWS.
The rest (instance types and AMI exist in the region, quotas, IAM, EFS, S3, the commands actually
succeeding on the nodes) needs a cloud account.

Beyond Ray's checks: the user settings are defined once, the shell commands parse the way Ray runs
them, the settings file they write and the torch-pin step work (run here with a stub installer),
and the flags given to `ray start` / `mlflow server` exist in the installed versions.

The functions used are private Ray API: the module skips unless ray is the version it was written
against.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

RAY_VERSION = "2.60.0"

ray = pytest.importorskip("ray")
if ray.__version__ != RAY_VERSION:
    pytest.skip(
        f"these tests call ray.autoscaler._private (private API) and were written against ray "
        f"{RAY_VERSION}; ray {ray.__version__} is installed. Re-check how `ray up` validates "
        f"(_bootstrap_config in ray/autoscaler/_private/commands.py) and update RAY_VERSION.",
        allow_module_level=True,
    )

import click  # noqa: E402  (after the version gate on purpose)
import jsonschema  # noqa: E402
from ray.autoscaler._private.command_runner import _with_interactive  # noqa: E402
from ray.autoscaler._private.commands import _bootstrap_config  # noqa: E402
from ray.autoscaler._private.util import (  # noqa: E402
    check_legacy_fields,
    prepare_config,
    validate_config,
    with_head_node_ip,
)

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"
BASH = "/bin/bash"

COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
# Settings a user must replace, by file: defined exactly once (in metadata.hardtruths_settings).
USER_ENV = {AWS: ("HT_BUCKET", "HT_NFS_SOURCE"), ONPREM: ("HT_NFS_SOURCE",)}
# GPUs per instance, for the instance types a user is likely to pick (AWS documentation).
AWS_GPUS = {
    "g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
    "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    "g6.xlarge": 1, "g6.2xlarge": 1, "g6.12xlarge": 4, "g6.48xlarge": 8,
    "g4dn.xlarge": 1, "g4dn.12xlarge": 4, "p3.8xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8,
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (boto3 to AWS, anything else) fails the test at once."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline cluster-config test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())  # as `ray up` reads it (anchors resolved)


def ray_up_offline(config: dict) -> dict:
    """Everything `ray up` checks before it needs a cloud account; returns the resolved config."""
    config = copy.deepcopy(config)
    if config["provider"]["type"] == "local":
        return _bootstrap_config(config, no_config_cache=True)  # the whole thing is offline
    prepared = prepare_config(config)
    validate_config(prepared)
    assert config["provider"]["type"] == "aws"
    import ray.autoscaler._private.aws.config as aws_config  # boto3 comes with the dev extra: a missing one fails
    check_legacy_fields(prepared)
    assert "ssh_private_key" in prepared["auth"], "without it _configure_key_pair calls AWS"
    bootstrapped = copy.deepcopy(prepared)
    bootstrapped["head_node"] = {}  # as bootstrap_aws does
    bootstrapped = aws_config._configure_key_pair(bootstrapped)
    aws_config._check_ami(bootstrapped)
    return prepared


def all_commands(config: dict):
    for key in COMMAND_LISTS:
        for cmd in config.get(key) or []:
            yield key, cmd
    for name, node_type in (config.get("available_node_types") or {}).items():
        for cmd in node_type.get("worker_setup_commands") or []:
            yield f"{name}.worker_setup_commands", cmd


def settings(config: dict) -> dict:
    return config["metadata"]["hardtruths_settings"]


def node_env(config: dict) -> dict[str, str]:
    """The KEY=VALUE words of the settings command (the quoted words after printf's format)."""
    words = shlex.split(settings(config)["write_node_env"])
    return dict(w.split("=", 1) for w in words if re.fullmatch(r"HT_[A-Z_]+=.*", w))


def run_bash(script: str, home: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, "-c", script],
        env={"HOME": str(home), "PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- Ray's own validation ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_passes_ray_validation(path):
    raw = load(path)
    resolved = ray_up_offline(raw)
    validate_config(resolved)  # idempotent: what the autoscaler on the head validates again
    # the file itself (not only the defaults-filled copy) is schema-valid
    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json") as f:
        jsonschema.validate(raw, json.load(f))
    assert resolved["head_node_type"] in resolved["available_node_types"]


def test_aws_ray_up_stops_at_the_first_aws_call(monkeypatch, tmp_path):
    """Ray's real _bootstrap_config on cluster.yaml, without credentials or network: it gets through
    prepare_config and validate_config (the failed resource autodetection is only a warning) and
    stops where bootstrap_aws first asks AWS for something (the head's IAM instance profile)."""
    import botocore.exceptions as botocore_exceptions  # boto3 comes with the dev extra: a missing one fails
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    called = []
    real_validate = validate_config

    def validate_and_record(config):
        real_validate(config)
        called.append(config["head_node_type"])

    monkeypatch.setattr("ray.autoscaler._private.commands.validate_config", validate_and_record)
    with pytest.raises((botocore_exceptions.NoCredentialsError, botocore_exceptions.EndpointConnectionError, OSError)):
        _bootstrap_config(load(AWS), no_config_cache=True)
    assert called == ["head"], "validation ran, and passed, before the first AWS call"


def test_aws_node_types():
    config = ray_up_offline(load(AWS))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head.get("max_workers", 0) == 0 and head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpus = {name: t["resources"].get("GPU", 0) for name, t in workers.items()}
    assert any(g == 1 for g in gpus.values()), "a small one-GPU type for many small trials"
    assert any(g >= 2 for g in gpus.values()), "a multi-GPU type for DDP students"
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"], name
        itype = t["node_config"]["InstanceType"]
        if itype in AWS_GPUS:
            assert gpus[name] == AWS_GPUS[itype], f"{name}: {itype} has {AWS_GPUS[itype]} GPUs"
        assert "CPU" in t["resources"], f"{name}: CPU count must be stated (no autodetection offline)"


def test_onprem_node_type_comes_from_hosts():
    config = ray_up_offline(load(ONPREM))
    (node_type,) = config["available_node_types"].values()
    n = len(config["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == config["max_workers"] == n


# --- deliberately broken copies fail --------------------------------------------------------


def _drop(*keys):
    def edit(c):
        d = c
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return edit


def _set(value, *keys):
    def edit(c):
        d = c
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


BROKEN_AWS = {
    # fillout_defaults puts back the default head type ("ray.head.default"), which is not defined
    "missing head_node_type": (_drop("head_node_type"), r"head_node_type"),
    "head_node_type not defined": (_set("cpu_head", "head_node_type"), r"must be one of"),
    "max_workers not an integer": (_set("twenty", "max_workers"), r"is not of type 'integer'"),
    "unknown top-level key": (_set({"region": "x"}, "settings"), r"Additional properties"),
    "typo in a node type": (
        _set(4, "available_node_types", "gpu_small", "max_worker"),
        r"Additional properties",
    ),
    "node type without resources": (
        _drop("available_node_types", "gpu_multi", "resources"),
        r"'resources' is a required property",
    ),
    "fractional GPU resource": (
        _set({"CPU": 4, "GPU": 0.5}, "available_node_types", "gpu_small", "resources"),
        r"is not of type 'integer'",
    ),
    "min_workers above max_workers": (
        _set(50, "available_node_types", "gpu_small", "min_workers"),
        r"smaller than the sum of `min_workers`",
    ),
    "start commands as one string": (
        _set("ray start --head", "head_start_ray_commands"),
        r"is not of type 'array'",
    ),
    "typo in auth": (_set("~/.ssh/k.pem", "auth", "ssh_key"), r"Additional properties"),
    "node type without KeyName": (
        _drop("available_node_types", "gpu_multi", "node_config", "KeyName"),
        r"KeyName",
    ),
}

BROKEN_ONPREM = {
    "node types on a local cluster": (
        _set({"n": {"resources": {}, "node_config": {}}}, "available_node_types"),
        r"not supported for on-premise",
    ),
    "no worker_ips": (_drop("provider", "worker_ips"), r"worker_ips"),
    "head_ip not a string": (_set(["192.168.1.10"], "provider", "head_ip"), r"is not of type 'string'"),
    "unknown top-level key": (_set(["192.168.1.11"], "hosts"), r"Additional properties"),
    "idle timeout not a number": (_set("ten", "idle_timeout_minutes"), r"is not of type 'number'"),
}

VALIDATION_ERRORS = (jsonschema.ValidationError, ValueError, click.ClickException, AssertionError)


@pytest.mark.parametrize(
    "path,edit,message",
    [pytest.param(AWS, e, m, id=f"aws: {k}") for k, (e, m) in BROKEN_AWS.items()]
    + [pytest.param(ONPREM, e, m, id=f"onprem: {k}") for k, (e, m) in BROKEN_ONPREM.items()],
)
def test_broken_copy_fails(path, edit, message, capfd):
    config = load(path)
    ray_up_offline(config)  # the unbroken file passes...
    edit(config)
    with pytest.raises(VALIDATION_ERRORS) as err:  # ...and the broken copy does not
        ray_up_offline(config)
    text = err.value.message if isinstance(err.value, click.ClickException) else str(err.value)
    # Ray's cli_logger.doassert prints its message and raises a bare AssertionError
    text += "\n" + "".join(capfd.readouterr())
    assert re.search(message, text), f"failed for another reason: {text[:500]}"


# --- the settings a user changes ------------------------------------------------------------


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_user_settings_are_in_one_place(path):
    text, config = path.read_text(), load(path)
    env = node_env(config)
    for key in USER_ENV[path]:
        value = env[key]
        assert value and text.count(value) == 1, f"{key}={value} should be written once, in metadata"
    # commands use the variables, not the values
    for key, cmd in all_commands(config):
        if cmd is settings(config)["write_node_env"]:
            continue
        for name in USER_ENV[path]:
            assert env[name] not in cmd, f"{key}: uses the value of {name} instead of ${name}"


def test_aws_settings_are_used():
    config = load(AWS)
    s = settings(config)
    assert config["provider"]["region"] == s["region"]
    assert config["provider"]["availability_zone"] == s["availability_zone"]
    assert all(az.startswith(s["region"]) for az in s["availability_zone"].split(","))
    assert config["auth"]["ssh_private_key"] == s["ssh_private_key"]
    for name, t in config["available_node_types"].items():
        assert t["node_config"]["KeyName"] == s["key_name"], name
        assert t["node_config"]["ImageId"] == s["image_id"], name
        assert t["node_config"]["SecurityGroupIds"] == s["security_group_ids"], f"{name}: SSH from the user's range only"
        profile = s["head_instance_profile"] if name == config["head_node_type"] else s["worker_instance_profile"]
        if name == config["head_node_type"] or "IamInstanceProfile" in t["node_config"]:
            assert t["node_config"]["IamInstanceProfile"] == profile, f"{name}: not Ray's EC2-and-S3-full-access role"
    env = node_env(config)
    assert env["HT_MLFLOW_ARTIFACTS"].startswith("s3://${HT_BUCKET}/")
    for key in ("HT_CACHE_DIR", "HT_OUT_DIR"):  # cache, outputs and Ray's storage_path (<--out>/ray)
        assert env[key].startswith("${HT_SHARED_DIR}/"), f"{key} must be on shared storage"


# --- the commands, as Ray runs them ------------------------------------------------------------


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_commands_parse_as_ray_runs_them(path):
    """Ray runs each command as `bash --login -c -i "source ~/.bashrc; ... && (CMD)"` over SSH
    (worker start commands prefixed with `export RAY_HEAD_IP=...;`): every one must parse there."""
    config = prepare_config(copy.deepcopy(load(path)))
    for key, cmd in all_commands(config):
        if key == "worker_start_ray_commands":
            (cmd,) = with_head_node_ip([cmd], head_ip="10.0.0.1")
        argv = _with_interactive(cmd)
        assert argv[:4] == ["bash", "--login", "-c", "-i"]
        (script,) = shlex.split(argv[4])
        check = subprocess.run([BASH, "-n", "-c", script], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"{key}: {cmd!r}\n{check.stderr}"


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_settings_file_and_bashrc_hook(path, tmp_path):
    config = load(path)
    write_env, hook = config["setup_commands"][:2]
    assert write_env is settings(config)["write_node_env"]
    (head_uri,) = [c for c in config["head_setup_commands"] if "MLFLOW_TRACKING_URI=" in c]
    for _ in range(2):  # setup commands rerun on every `ray up`: idempotent
        for cmd in (write_env, hook, head_uri):  # in the order Ray runs them on the head, after ~/.bashrc
            done = run_bash(f"[ ! -f ~/.bashrc ] || . ~/.bashrc; {cmd}", tmp_path)
            assert done.returncode == 0, done.stderr
    env_file = tmp_path / "hardtruths.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, "only its owner reads the cluster's settings"
    assert (tmp_path / ".bashrc").read_text().count("hardtruths-cluster") == 1
    # what every later command sees (Ray sources ~/.bashrc first)
    shown = run_bash(". ~/.bashrc; env", tmp_path)
    seen = dict(line.split("=", 1) for line in shown.stdout.splitlines() if line.startswith("HT_"))
    (uri,) = [line for line in shown.stdout.splitlines() if line.startswith("MLFLOW_TRACKING_URI=")]
    assert uri == "MLFLOW_TRACKING_URI=http://127.0.0.1:5000", "the head's loopback, by default"
    env = node_env(config)
    assert set(seen) == set(env)
    shared = env["HT_SHARED_DIR"]
    assert seen["HT_CACHE_DIR"].startswith(shared + "/") and seen["HT_OUT_DIR"].startswith(shared + "/")
    (root,) = [line.split("=", 1)[1] for line in shown.stdout.splitlines() if line.startswith("HARDTRUTHS_CACHE=")]
    assert root == seen["HT_CACHE_DIR"], "what a loader caches on its own (a tree's scan) must be shared too"
    if path == AWS:
        assert seen["HT_MLFLOW_ARTIFACTS"] == f"s3://{env['HT_BUCKET']}/mlflow"
    else:
        assert seen["HT_MLFLOW_ARTIFACTS"].startswith(shared + "/")


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_uv_picks_the_torch_build(path):
    """uv chooses the torch build for the node's driver (HT_TORCH_BACKEND, `auto` by default) in every install,
    so a later install never swaps a CUDA torch for PyPI's default build."""
    config = load(path)
    assert node_env(config)["HT_TORCH_BACKEND"] == "auto"
    installs = [c for _, c in all_commands(config) if "uv pip install" in c]
    assert installs and all('--torch-backend "$HT_TORCH_BACKEND"' in c for c in installs), installs


def _installed_source(package: str, *files: str) -> str:
    """Source files of an installed package, found without importing it (mlflow takes seconds)."""
    (root,) = importlib.util.find_spec(package).submodule_search_locations
    return "".join((Path(root) / f).read_text() for f in files)


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_start_commands(path):
    """MLflow on the head (PostgreSQL backend, its secrets from a file) and a tracking URI on the head only; the
    flags passed to `ray start` and `mlflow server` exist in the installed versions (read from their sources:
    importing the two CLIs would take seconds)."""
    config = load(path)
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "ray start --head" in head and "ray start --address=$RAY_HEAD_IP:6379" in workers
    assert "MLFLOW" not in workers, "workers do not talk to MLflow: the study driver on the head does"
    (head_env,) = [c for c in config["head_setup_commands"] if "MLFLOW_TRACKING_URI=" in c]
    assert head_env.endswith('echo "MLFLOW_TRACKING_URI=http://$host:$HT_MLFLOW_PORT" >> ~/hardtruths.env')
    (unit,) = [c for c in config["head_start_ray_commands"] if "systemd-run" in c]
    assert unit.rstrip().endswith('"$HOME/hardtruths/cluster/mlflow-server"')
    server = (ROOT / "cluster" / "mlflow-server").read_text()
    mlflow_cmd = server[server.index('exec "$HOME/venv/bin/mlflow" server'):]
    assert "--backend-store-uri postgresql+psycopg2://mlflow@127.0.0.1/mlflow" in mlflow_cmd
    assert '--artifacts-destination "$HT_MLFLOW_ARTIFACTS"' in mlflow_cmd
    assert '--host "$HT_MLFLOW_HOST" --port "$HT_MLFLOW_PORT"' in mlflow_cmd
    assert node_env(config)["HT_MLFLOW_HOST"] == "127.0.0.1", "MLflow on the head's loopback unless asked"
    setup = " ".join(config["head_setup_commands"])
    assert "install -y postgresql" in setup and "cluster/mlflow-setup" in setup

    mlflow_cli = _installed_source("mlflow", "cli/__init__.py", "utils/cli_args.py")
    for flag in set(re.findall(r"--[a-z][a-z-]+", mlflow_cmd.split("server", 1)[1])):
        assert f'"{flag}"' in mlflow_cli, f"mlflow server has no {flag}"
    ray_cli = _installed_source("ray", "scripts/scripts.py")
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in cmd:
            for flag in set(re.findall(r"--[a-z][a-z-]+", cmd.split("ray start", 1)[1])):
                assert f'"{flag}"' in ray_cli, f"ray start has no {flag}"


# --- reproducible and authenticated nodes --------------------------------------------------------


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_every_install_uses_the_constraints(path):
    config = load(path)
    installs = [c for _, c in all_commands(config) if "uv pip install" in c]
    assert len(installs) >= 2
    assert all("-c ~/hardtruths/constraints.txt" in c for c in installs), installs


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_ray_token_on_every_node_and_the_mlflow_login_on_the_head_only(path):
    """Ray runs with token authentication (the token made once on the user's machine, shipped with the file
    mounts, 600 on every node) and the MLflow server with its basic-auth app; the MLflow login is on the head
    only (client.env beside the generated secrets), never in the settings every node gets."""
    config = load(path)
    words = shlex.split(settings(config)["write_node_env"])
    env = dict(w.split("=", 1) for w in words if re.fullmatch(r"[A-Z_]+=.*", w))
    assert env["RAY_AUTH_MODE"] == "token"
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 700 ~/.ray && chmod 600 ~/.ray/auth_token" in config["setup_commands"]
    assert not [k for k in env if k.startswith("MLFLOW_")], "every node gets these settings"
    assert env["HT_MLFLOW_HOME"] == "${HOME}/mlflow", "the secrets live on the head's disk, beside the user store"
    server = (ROOT / "cluster" / "mlflow-server").read_text()
    assert "--app-name basic-auth" in server and '. "$HT_MLFLOW_HOME/server.env"' in server
    hook = config["setup_commands"][1]
    assert '. "$HT_MLFLOW_HOME/client.env"' in hook, "the head's shells and study drivers log in to MLflow"
    assert not any("RAY_AUTH_MODE=disabled" in c for _, c in all_commands(config))


SECRET_WORDS = re.compile(r"(?i)(password|passwd|secret|token)[A-Z_]*\s*[=:]\s*['\"]?([^\s'\"]+)")


def secret_literals(text: str) -> list[str]:
    """`PASSWORD=value`-like words whose value is written out (not a variable or a file's path)."""
    return [m.group(0) for m in SECRET_WORDS.finditer(text) if not m.group(2).startswith(("$", "~/", "{"))]


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_no_password_literal_in_the_config(path):
    """The configs are tracked by git and uploaded with every `ray job submit --working-dir .`: no password, key
    or token may be written in them, only generated on the head (cluster/mlflow-setup)."""
    text = path.read_text()
    assert not secret_literals(text), f"secret values written in {path.name}: {secret_literals(text)}"
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a password inside a URI"
    assert not re.search(r"--setenv=\S*(PASSWORD|SECRET)", text), "a secret in systemd's unit properties"


def test_no_password_check_catches_one():
    """The check above, on a copy with the old literal put back."""
    text = AWS.read_text().replace("'HT_MLFLOW_USER=hardtruths'", "'HT_MLFLOW_USER=hardtruths' 'HT_MLFLOW_PASSWORD=change1me1please'")
    assert secret_literals(text) == ["PASSWORD=change1me1please"]


# --- least privilege on AWS ---------------------------------------------------------------------


def test_aws_template_gives_the_head_no_more_than_the_study_needs():
    """cluster/aws-least-privilege.yaml (CloudFormation, made by the user once): the head's role reaches the one
    bucket and only this cluster's instances; SSH comes only from the range the user gives; cluster.yaml uses
    what it makes."""
    template = yaml.safe_load((ROOT / "cluster" / "aws-least-privilege.yaml").read_text())
    resources, params = template["Resources"], template["Parameters"]
    statements = [s for policy in resources["HeadRole"]["Properties"]["Policies"]
                  for s in policy["PolicyDocument"]["Statement"]]
    actions = [a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert not [a for a in actions if a.endswith("*")], "no wildcard actions"
    for s in statements:
        if any(a.startswith("s3:") for a in s["Action"] if isinstance(s["Action"], list)) or str(s["Action"]).startswith("s3:"):
            assert "${BucketName}" in s["Resource"]["Fn::Sub"], s
        if {"ec2:TerminateInstances", "ec2:StopInstances"} & set(s["Action"]):
            assert s["Condition"]["StringEquals"] == {"aws:ResourceTag/ray-cluster-name": {"Ref": "ClusterName"}}
    assert params["ClusterName"]["Default"] == load(AWS)["cluster_name"]
    (ssh,) = resources["ClusterSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (ssh["FromPort"], ssh["ToPort"], ssh["CidrIp"]) == (22, 22, {"Ref": "SshCidr"})
    assert "Default" not in params["SshCidr"], "the user chooses the range"
    s = settings(load(AWS))
    profile_name = resources["HeadInstanceProfile"]["Properties"]["InstanceProfileName"]["Fn::Sub"]
    assert s["head_instance_profile"]["Arn"].endswith("instance-profile/" + profile_name.replace("${ClusterName}", params["ClusterName"]["Default"]))


# --- GPU nodes checked at boot ------------------------------------------------------------------


def test_gpu_check_fails_where_torch_cannot_use_a_gpu(tmp_path):
    """cluster/check-gpu, run here with this machine's torch as the node's ~/venv: a GPU node type's setup fails
    with one sentence naming the torch build and the driver; on a host without an NVIDIA GPU, `--if-any` passes."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (tmp_path / "venv" / "bin" / "python").chmod(0o755)
    types = load(AWS)["available_node_types"]
    assert all(t.get("worker_setup_commands") == ["~/hardtruths/cluster/check-gpu"]
               for t in types.values() if t["resources"].get("GPU")), "every GPU node type checks at boot"
    assert load(ONPREM)["worker_setup_commands"] == ["~/hardtruths/cluster/check-gpu --if-any"]
    env = {"PATH": "/usr/bin:/bin"}  # no nvidia-smi: a node without a driver
    failed = run_bash(str(ROOT / "cluster" / "check-gpu"), tmp_path, **env)
    assert failed.returncode == 1
    assert failed.stderr.strip() == (
        f"hardtruths: this GPU node's torch ({torch.__version__} built for CUDA {torch.version.cuda}) cannot use its "
        f"GPU (NVIDIA driver: none found); use an image with NVIDIA drivers, or set HT_TORCH_BACKEND to a cuXYZ build "
        f"the driver supports (nvidia-smi shows the highest CUDA version it supports).")
    assert run_bash(f"{ROOT}/cluster/check-gpu --if-any", tmp_path, **env).returncode == 0
