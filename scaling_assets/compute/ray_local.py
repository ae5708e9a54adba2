"""A Ray cluster on this machine (a head and nodes with logical GPUs), for trying the Ray launcher on
one box, its tests and its benchmarks. Each node's dashboard agent gets a free port: Ray's fixed
default (52365) is taken by any other Ray cluster on the machine, and job submission then fails
with "No available agent to submit job"."""

from __future__ import annotations

import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_node(cluster, **node_args):
    """``cluster.add_node`` with a free dashboard agent port (``num_cpus=``, ``num_gpus=``, ...)."""
    return cluster.add_node(dashboard_agent_listen_port=_free_port(), **node_args)


def start_local_cluster(head_cpus: float = 1, nodes: tuple[dict, ...] = ({"num_cpus": 2, "num_gpus": 1},)):
    """Start a head (no GPUs, ``head_cpus`` CPUs) and ``nodes``; connect this process as a driver.
    Returns ``(cluster, job_server_url, node_objects)``; stop with ``stop_local_cluster(cluster)``."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "num_gpus": 0, "include_dashboard": True, "dashboard_port": 0,
        "dashboard_agent_listen_port": _free_port()})
    try:
        added = [add_node(cluster, **args) for args in nodes]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        url = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
    except BaseException:
        stop_local_cluster(cluster)
        raise
    return cluster, url, added


def stop_local_cluster(cluster) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()
