"""The loop on a multi-node Ray cluster of local processes, autoscaled by Ray, in the README's order.

The scenario (``multinode_scenario.py``) runs in a process of its own with its own cluster
(:class:`cluster.local_cluster.LocalCluster`), broker and S3-protocol server, and reports what it
saw; this test checks it.
"""

from __future__ import annotations


import json

import pytest

from tests.integration.scenarios import run_scenario

pytestmark = pytest.mark.integration


def test_service_first_then_jobs_on_an_autoscaling_cluster():
    r = run_scenario("multinode_scenario.py", timeout_s=1200)
    print(json.dumps(r, indent=1))
    before = r["before_embeddings"]
    assert before["healthz"][0] == 503 and before["healthz"][1]["error"].startswith("no embeddings yet")
    assert before["recommend"][0] == 503 and before["recommend"][1]["error"].startswith("no embeddings yet")
    assert r["embed"]["status"] == "SUCCEEDED", r["embed"]
    assert r["embed"]["log_says_cpu_fallback"]  # the encoder ran on the GPU node type and said it had no CUDA
    assert any(n["gpu"] for n in r["nodes_seen"])  # the autoscaler brought the GPU node type up from zero
    assert r["before_policy"]["healthz"][0] == 503 and r["before_policy"]["healthz"][1]["error"].startswith("no policy yet")
    assert r["published_version"] >= 2  # clicks went through Kafka, ingest, the trainer, the store
    assert r["requests"].get("200", 0) > 0 and set(r["requests"]) <= {"200", "503"}
    assert all(r["on_worker_nodes"].values()), r["on_worker_nodes"]  # the PPO learner too: one remote actor
    assert r["remote_learners"] == 1
    out = r["ranker_scale_out"]  # load grew the Ranker to a third replica, on a node the autoscaler added
    assert out["replicas_before"] == 2 and out["on_an_added_node"] >= 1, out
    assert set(out["requests"]) == {"200"}, out
    loss = r["node_loss"]  # the nodes of the trainer, an ingest actor and a Ranker replica died under traffic
    assert loss["processes_killed"] > 0, loss
    ran = {cls for node in loss["nodes_ran"] for cls in node}
    assert {"Trainer", "StreamIngest", "ServeReplica:streamrec:Ranker"} <= ran, loss
    assert not any(k.endswith("failed_after_retry") for k in loss["requests"]) and loss["requests"]["served"] > 0, loss
    assert loss["requests"]["victim_answered"] > 0, loss  # the killed replica was serving this traffic
    assert loss["served_not_logged"] == 0 and loss["distinct"] == loss["impressions_served"]  # nothing served was lost
    assert loss["consumed"] == loss["logged"] and loss["digest_matches"], loss  # everything in Kafka trained once
    assert "seconds_to_added_actor_consuming" in r["lag_spike"], r["lag_spike"]  # the lag controller grew ingest
    assert r["scaled_down"]
