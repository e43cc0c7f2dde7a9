"""Every replica's inter-deployment gRPC server on its node's address, not on every interface.

Ray Serve 2.60 starts one gRPC server in each replica for handle calls between deployments (the
Ranker asking the ContextEncoder) and binds it on ``[::]:0`` — every interface, not configurable
(``ray/serve/_private/replica.py``). Handles dial it at the replica's node IP
(``RunningReplicaInfo.node_ip``), so binding that address alone changes nothing for them and
keeps a loopback-only head (``streamrec up``) listening on loopback only; on a cluster the node IP
is the pod's or host's own address, as for Ray's other listeners.

:func:`bind_replica_grpc_to_node_ip` runs in each deployment's constructor, which Serve calls
before it starts that server. The integration tests list every listening socket of a running
stack, so a Ray that starts binding differently fails them rather than passing unnoticed.
"""

from __future__ import annotations

__all__ = ["bind_replica_grpc_to_node_ip"]


def bind_replica_grpc_to_node_ip() -> str | None:
    """In a Serve replica's process: make Serve bind its inter-deployment gRPC server on this
    node's IP. Returns that IP (None where Ray's replica module has no such hook: nothing changed)."""
    import ray
    from ray.serve._private import replica as ray_replica

    add_port = getattr(ray_replica, "add_port_to_grpc_server", None)
    if add_port is None:
        return None
    if getattr(add_port, "node_ip", None):
        return add_port.node_ip
    ip = ray.util.get_node_ip_address()
    host = f"[{ip}]" if ":" in ip else ip

    def add_port_on_node_ip(server, address: str):
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return add_port(server, address)

    add_port_on_node_ip.node_ip = ip
    ray_replica.add_port_to_grpc_server = add_port_on_node_ip
    return ip
