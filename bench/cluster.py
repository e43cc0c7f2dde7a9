"""Cluster benchmark: the loop on a multi-node Ray cluster of local processes, autoscaled by Ray.

    python -m bench.cluster

Runs ``tests/integration/multinode_scenario.py`` (the path ``test_multinode.py`` checks: an
S3-protocol server, the embedded broker, :class:`cluster.local_cluster.LocalCluster` with CPU and
GPU node types from zero) and prints one JSON line, each figure next to its peer from the same run:

- job submit -> the embedding run written to object storage by an encoder on a node the
  autoscaler started for it; peer: submit -> that GPU node up;
- eight clients without pause -> a third Ranker replica running on a node the autoscaler added;
  peer: the clients stopping -> back to two replicas;
- the processes of the worker nodes of the trainer, an ingest actor and a Ranker replica
  killed at once -> the trainer restarted elsewhere and training again, and the Ranker back at
  two replicas; peer: -> Ray marking the nodes dead;
- a burst of 200,000 impressions -> an ingest actor the lag controller added has consumed
  records; peer: how long one producer took to write the burst.
"""

from __future__ import annotations

import json
import sys

from tests.integration.scenarios import run_scenario


def main() -> int:
    r = run_scenario("multinode_scenario.py", timeout_s=1500)
    gpu_up = min((n["at_s"] for n in r["nodes_seen"] if n["gpu"]), default=None)
    submitted = r["seconds"]["embed_submitted"]
    loss, spike, out = r["node_loss"], r["lag_spike"], r["ranker_scale_out"]
    print(json.dumps({
        "bench": "cluster",
        "submit_to_vectors_in_object_store_s": r["embed"]["seconds"],
        "submit_to_gpu_node_up_s": None if gpu_up is None else round(gpu_up - submitted, 1),
        "load_to_third_ranker_replica_s": out["seconds_to_third_replica"],
        "third_replica_on_an_added_node": out["on_an_added_node"] >= 1,
        "load_stopped_to_two_replicas_s": out["seconds_to_two_replicas"],
        "node_loss_to_training_again_s": loss["seconds_to_training_again"],
        "node_loss_to_ranker_replaced_s": loss["seconds_to_ranker_replaced"],
        "node_loss_to_nodes_marked_dead_s": loss["seconds_to_nodes_marked_dead"],
        "node_loss_requests": loss["requests"], "node_loss_served_not_logged": loss["served_not_logged"],
        "node_loss_logged_not_served": loss["logged_not_served"],
        "node_loss_impressions_trained_once": loss["digest_matches"] and loss["consumed"] == loss["logged"],
        "lag_spike_to_added_actor_consuming_s": spike.get("seconds_to_added_actor_consuming"),
        "lag_spike_write_s": spike.get("seconds_to_write_the_spike"),
        "service_up_s": r["seconds"]["service_up"], "idle_nodes_gone_s": r["seconds"]["scale_down"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
