"""Policy weights on the wire and on disk: safetensors bytes + a JSON manifest, validated. Never pickle.

    blob, sha = pack(tensors)                        # {name: ndarray} -> safetensors bytes, sha256 hex
    tensors = unpack(blob, sha256=sha, expect=spec)  # WeightsError on a bad hash, dtype, NaN, names/shapes

Every tensor is float32 (:data:`DTYPE`): anything else in a blob is refused, so a complex, bool
or integer tensor cannot slip past the finiteness check. ``expect`` maps each tensor name to its
shape; every policy states its own (``expected_shapes`` of :mod:`rl.policies`), so a version
built for another catalog or layout is refused before it can serve.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np

__all__ = ["WeightsError", "pack", "unpack", "sha256_hex", "DTYPE"]

DTYPE = np.dtype(np.float32)
"""The one dtype of published tensors."""


class WeightsError(ValueError):
    """Weights are malformed, non-finite, or do not fit the policy; the message says which tensor."""


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def pack(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """safetensors bytes of the tensors as float32 (real floating-point input only), and their sha256."""
    from safetensors.numpy import save

    clean: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        a = np.asarray(t)
        if a.dtype.kind != "f":
            raise WeightsError(f"tensor {name!r}: dtype {a.dtype} is not floating point")
        a = a.astype(DTYPE)
        if not np.isfinite(a).all():
            raise WeightsError(f"tensor {name!r} contains NaN or infinity")
        clean[name] = np.ascontiguousarray(a)
    blob = save(clean, metadata=dict(metadata) if metadata else None)
    return blob, sha256_hex(blob)


def unpack(blob: bytes, *, sha256: str | None = None,
           expect: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Parse and check safetensors bytes; raises WeightsError naming what is wrong."""
    from safetensors.numpy import load

    if not isinstance(blob, (bytes, bytearray)) or not blob:
        raise WeightsError("weights are empty")
    if sha256 is not None and sha256_hex(bytes(blob)) != sha256:
        raise WeightsError("weights do not match their sha256 (corrupt or tampered)")
    try:
        tensors = load(bytes(blob))
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise WeightsError(f"not a safetensors file: {e}") from None
    for name, t in tensors.items():
        if t.dtype != DTYPE:
            raise WeightsError(f"tensor {name!r} has dtype {t.dtype}; published weights are {DTYPE}")
        if not np.isfinite(t).all():
            raise WeightsError(f"tensor {name!r} contains NaN or infinity")
    if expect is not None:
        missing = sorted(set(expect) - set(tensors))
        if missing:
            raise WeightsError(f"missing tensor(s): {', '.join(missing)}")
        extra = sorted(set(tensors) - set(expect))
        if extra:
            raise WeightsError(f"unexpected tensor(s): {', '.join(extra)}")
        for name, shape in expect.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise WeightsError(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}")
    return tensors
