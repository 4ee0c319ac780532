"""Issue 31: a trial no node can hold is named, not waited on (trainables.placement), and a preparation task
given a GPU that torch cannot see says so (trainables.prepare).

The check before the study against node types, and the report while it runs, on a real local Ray (which declares
a GPU it does not have); the whole study on Ray's fake autoscaling provider is
tests/test_autoscaling.py::test_trial_no_node_type_can_hold_is_refused.
"""
from __future__ import annotations

import shutil

import pytest
import ray
from servers import short_tmp

from study.core.errors import StudyError
from trainables.placement import TrialRequest, UnplaceableWatch, check_placeable, trial_request

HEAD = {"CPU": 0}


def test_a_gpu_node_type_with_one_cpu_cannot_hold_a_train_trial():
    request = trial_request("ray-train", cpus=1, gpus=1, workers=1)
    assert request == TrialRequest({"CPU": 1, "GPU": 1}, 1, {"CPU": 0.01})
    with pytest.raises(StudyError) as err:
        check_placeable(request, {"head": HEAD, "gpu": {"CPU": 1, "GPU": 1}})
    message = str(err.value)
    assert message == ("No node type of this cluster can hold a trial: it asks for {CPU: 1, GPU: 1} for each of its "
                       "1 Train worker(s), one of them beside {CPU: 0.01} for its Tune driver on the same node, and "
                       "the node types are gpu {CPU: 1, GPU: 1}; ask for at most 0.99 CPU(s) per worker "
                       "(--cpus-per-trial) or give the node type more CPUs.")
    check_placeable(trial_request("ray-train", cpus=0.99, gpus=1, workers=1), {"gpu": {"CPU": 1, "GPU": 1}})
    check_placeable(request, {"head": HEAD, "gpu": {"CPU": 4, "GPU": 1}})  # cluster.yaml's gpu_small
    check_placeable(trial_request("inline", cpus=1, gpus=1, workers=1), {"gpu": {"CPU": 1, "GPU": 1}})
    check_placeable(request, None)  # node types unknown: only the report while the study runs applies


def test_a_gpu_trial_on_cpu_node_types_is_refused():
    with pytest.raises(StudyError, match=r"asks for \{CPU: 1, GPU: 0.25\} for the trial, and the node types are "
                                         r"cpu \{CPU: 8\}\.$"):
        check_placeable(trial_request("inline", cpus=1, gpus=0.25, workers=1), {"cpu": {"CPU": 8}})


@pytest.fixture(scope="module")
def local_ray():
    temp = short_tmp("htplace-")
    ray.init(num_cpus=1, num_gpus=1, log_to_driver=False, include_dashboard=False, _temp_dir=str(temp))
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def test_a_request_waiting_with_no_node_coming_is_named_once(local_ray):
    """A placement group this one-CPU Ray can never hold: said once the setting's time has passed with nothing
    starting, once per shape, and not while the autoscaler is starting nodes."""
    group = ray.util.placement_group([{"CPU": 2}])
    said = []
    watch = UnplaceableWatch(after=60, say=said.append)
    table = ray.util.placement_group_table()
    assert [pg["state"] for pg in table.values()] == ["PENDING"]
    assert watch.check(1000.0, table, launching=False) == []
    assert watch.check(1059.0, table, launching=False) == []
    assert watch.check(1070.0, table, launching=True) == [], "nodes are starting: it may yet fit"
    (line,) = watch.check(1071.0, table, launching=False)
    assert line.startswith("A trial's request {CPU: 2} has waited 71 s with no node free for it and none "
                           "starting (the cluster has 1 CPU(s), 1 GPU(s))")
    assert said == [line]
    assert watch.check(2000.0, ray.util.placement_group_table(), launching=False) == [], "once per shape"
    ray.util.remove_placement_group(group)
    assert watch.check(2001.0, ray.util.placement_group_table(), launching=False) == []


@pytest.mark.slow
def test_a_selection_task_given_a_gpu_torch_cannot_see_refuses(local_ray):
    """This Ray declares a GPU and torch sees none (as on a GPU node with a CPU-only torch): the task fails with
    one sentence, raised in the driver as it is."""
    import torch

    from study.runs.spec import resolve_spec
    from trainables.prepare import prepare_repeat, task_result

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    cell = resolve_spec("smoke").cells()[0]
    with pytest.raises(StudyError, match=r"^This selection task asked for 1 GPU\(s\) but runs on node .*, where torch "
                                         r"sees no CUDA device"):
        task_result(prepare_repeat.options(num_gpus=1).remote(cell, 0, None))
