"""Whether the cluster can place a trial: refused before the study starts when no node type can hold one, and
reported while the study runs when a trial's request has waited a while with no node coming for it.

A ray-train trial is a Tune driver (:data:`TRIAL_DRIVER`, a hundredth of a CPU) and its Train workers. Tune
places each driver first, wherever it fits, and only then asks for the workers. On a node type that cannot hold
a driver beside a worker (a GPU node type with one CPU and ``--cpus-per-trial 1``), the drivers of concurrent
trials take a node each and no worker ever fits beside them: the study waits for nodes that never come. So a
node type holds a trial when it holds the driver and one worker together (an inline trial is one bundle).

The node types come from the cluster's autoscaling config: the one Ray keeps in its GCS where the autoscaler
reports it (what Ray Train reads), else the file the autoscaler on this node was started with, read from its
command line (``--autoscaling-config``: ``~/ray_bootstrap_config.yaml`` on a ``ray up`` head, where the study's
driver runs). Without either (a driver away from the head of a cluster whose autoscaler does not report its
config), only the check while it runs applies.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml

from study.core.errors import StudyError

TRIAL_DRIVER = {"CPU": 0.01}  # what trainables.tune_study asks for a ray-train trial's Tune driver
UNPLACEABLE_AFTER_S = 60.0  # how long a request may wait with no node coming before the study says so


def unplaceable_after() -> float:
    """Seconds a trial's request may wait with no node coming before it is reported: HARDTRUTHS_UNPLACEABLE_S."""
    raw = os.environ.get("HARDTRUTHS_UNPLACEABLE_S")
    if raw is None:
        return UNPLACEABLE_AFTER_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise StudyError(f"HARDTRUTHS_UNPLACEABLE_S={raw!r} must be a number of seconds (0 or more), e.g. 60.")
    return value


def shape(resources: dict) -> str:
    """``{CPU: 1, GPU: 1}``: a request as the user sets it, without Ray's internal resources."""
    shown = {k: v for k, v in resources.items() if v and not k.startswith(("node:", "object_store", "memory",
                                                                            "accelerator_type"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


@dataclass(frozen=True)
class TrialRequest:
    """What one trial asks the cluster for: ``workers`` bundles of ``worker``, beside ``driver`` (None: the trial
    trains inline, in its one bundle)."""

    worker: dict
    workers: int = 1
    driver: dict | None = None

    def describe(self) -> str:
        if self.driver is None:
            return f"{shape(self.worker)} for the trial"
        return (f"{shape(self.worker)} for each of its {self.workers} Train worker(s), one of them beside "
                f"{shape(self.driver)} for its Tune driver on the same node")

    def fits(self, node: dict) -> bool:
        together = dict(self.worker)
        for k, v in (self.driver or {}).items():
            together[k] = together.get(k, 0) + v
        return all(node.get(k, 0) >= v - 1e-9 for k, v in together.items() if v > 0)


def trial_request(executor: str, cpus: float, gpus: float, workers: int) -> TrialRequest:
    worker = {k: v for k, v in {"CPU": cpus, "GPU": gpus}.items() if v > 0}
    if executor == "ray-train":
        return TrialRequest(worker, workers, TRIAL_DRIVER)
    return TrialRequest(worker)


def reported_node_types() -> dict[str, dict] | None:
    """The node types the autoscaler reported to the GCS (KubeRay, the v2 autoscaler), name -> resources."""
    config = ray._private.state.state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return {g.name: dict(g.resources) for g in config.node_group_configs if g.max_count != 0}


def autoscaler_config_file() -> Path | None:
    """The ``--autoscaling-config`` of the autoscaler of this cluster (matched by its GCS address) on this node."""
    gcs = ray.get_runtime_context().gcs_address
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.endswith("autoscaler/_private/monitor.py") for a in args) and f"--gcs-address={gcs}" in args:
            config = [a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")]
            return Path(config[0]).expanduser() if config else None
    return None


def configured_node_types() -> dict[str, dict] | None:
    """Node types (name -> resources) of the autoscaling config file; None where a type's resources are left to
    Ray to detect (on-premise hosts), since nothing then says what the nodes hold."""
    path = autoscaler_config_file()
    if path is None or not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    types = config.get("available_node_types") or {}
    if not types or any(not t.get("resources") for t in types.values()):
        return None
    return {name: dict(t["resources"]) for name, t in types.items()
            if t.get("max_workers", 1) or name == config.get("head_node_type")}


def node_types() -> dict[str, dict] | None:
    return reported_node_types() or configured_node_types()


def check_placeable(request: TrialRequest, types: dict[str, dict] | None) -> None:
    """Refuse, in one sentence, a study whose trials no node type can hold (see the module's docstring)."""
    if not types or any(request.fits(resources) for resources in types.values()):
        return
    offered = ", ".join(f"{name} {shape(r)}" for name, r in types.items() if shape(r) != "{}")  # not a CPU: 0 head
    hint = ""
    if request.driver is not None:
        others = {k: v for k, v in request.worker.items() if k != "CPU"}
        room = max([r.get("CPU", 0) - request.driver["CPU"] for r in types.values()
                    if all(r.get(k, 0) >= v for k, v in others.items())], default=0)
        if room > 0:
            hint = f"; ask for at most {room:g} CPU(s) per worker (--cpus-per-trial) or give the node type more CPUs"
    raise StudyError(f"No node type of this cluster can hold a trial: it asks for {request.describe()}, and the "
                     f"node types are {offered}{hint}.")


def autoscaler_launching() -> bool:
    """True while the autoscaler reports nodes it is launching or that are still starting."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    if not status:
        return False
    report = json.loads(status).get("autoscaler_report") or {}
    return bool(report.get("pending_launches") or report.get("pending_nodes"))


class UnplaceableWatch:
    """Says once per resource shape when a placement group has been pending ``after`` seconds and the autoscaler
    starts no node for it. ``check`` is called with the time and the cluster's placement group table."""

    def __init__(self, after: float, say=print):
        self.after, self.say = after, say
        self.first_seen: dict[str, float] = {}
        self.reported: set[str] = set()

    def check(self, now: float, table: dict, launching: bool) -> list[str]:
        pending = {pg_id: pg for pg_id, pg in table.items() if pg["state"] == "PENDING"}
        self.first_seen = {pg_id: self.first_seen.get(pg_id, now) for pg_id in pending}
        if launching:
            return []
        said = []
        for pg_id, pg in pending.items():
            waited = now - self.first_seen[pg_id]
            bundles = list(pg["bundles"].values())
            key = " + ".join(shape(b) for b in bundles)
            if waited < self.after or key in self.reported:
                continue
            self.reported.add(key)
            res = ray.cluster_resources()
            said.append(f"A trial's request {key} has waited {waited:.0f} s with no node free for it and none "
                        f"starting (the cluster has {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s)): no "
                        f"node the autoscaler may still add can hold it, so it waits until another trial frees a "
                        f"place.")
            self.say(said[-1])
        return said

    def poll(self) -> list[str]:
        return self.check(time.monotonic(), ray.util.placement_group_table(), autoscaler_launching())
