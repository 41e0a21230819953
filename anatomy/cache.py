"""The KV cache: keys and values of the positions a decoder has already processed.

A causal model's keys and values at position t depend only on tokens <= t, so once computed they stay
valid however the sequence continues: a later call runs only the new tokens and attends to the cache.
The cache also records the token ids it holds, so reusing it with a different prefix is an error instead
of a silently wrong answer, and which model filled it (its stack of layers), so that another model of the
same shape cannot continue from it.
"""

from __future__ import annotations

import weakref

import torch

from anatomy._checks import check_device, check_dtype, check_int, check_positive_int, check_tensor

__all__ = ["KVCache", "kv_cache_bytes"]


class KVCache:
    """Per-layer keys and values, each (B, n_kv_heads, len, head_dim), grown in place up to ``max_len``."""

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        n_layers, batch_size, n_kv_heads, head_dim, max_len = (
            check_positive_int(name, value)
            for name, value in (
                ("n_layers", n_layers),
                ("batch_size", batch_size),
                ("n_kv_heads", n_kv_heads),
                ("head_dim", head_dim),
                ("max_len", max_len),
            )
        )
        check_dtype("dtype", dtype, floating=True)  # an integer cache would round the keys
        device = check_device("device", device)
        self.n_layers, self.batch_size, self.n_kv_heads, self.head_dim = (
            n_layers,
            batch_size,
            n_kv_heads,
            head_dim,
        )
        self.max_len, self.dtype, self.device = max_len, dtype, torch.device(device)
        self._len = 0
        self._capacity = 0
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self.tokens = torch.empty(batch_size, 0, dtype=torch.long, device=self.device)
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # encoder-decoder: cross-attn K/V
        self.source: torch.Tensor | None = None  # encoder-decoder: the encoded source ids
        self._owner: weakref.ref | None = None  # the layers (nn.ModuleList) of the model that filled it

    def claim(self, layers: torch.nn.Module) -> None:
        """Record that the model whose stack of blocks is ``layers`` fills this cache; raise ValueError if
        the cache holds keys and values of another model (same shape or not, its numbers would be wrong).

        The stack identifies the model: a different model (even of the same shape, or a deep copy) has its
        own, and a view of the same network with another mask (``inference.with_mask``) shares it. An empty
        cache (new, or truncated to 0 and cleared) may be taken over by any model.
        """
        owner = None if self._owner is None else self._owner()
        if owner is layers:
            return
        if not isinstance(layers, torch.nn.Module):
            raise TypeError(f"layers must be a torch.nn.Module, got {type(layers).__name__}")
        if self._len or self.cross is not None:
            raise ValueError(
                "cache was filled by another model (its keys and values would be wrong for this one): use "
                "this model's new_cache(), or clear() the cache first"
            )
        self._owner = weakref.ref(layers)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (
            f"KVCache(len={self._len}, max_len={self.max_len}, layers={self.n_layers}, "
            f"batch={self.batch_size}, "
            f"kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, nbytes={self.nbytes:,})"
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the cached keys and values: 2 * layers * B * n_kv_heads * head_dim * len * itemsize."""
        item = torch.empty((), dtype=self.dtype).element_size()
        kv = 2 * self.n_layers * self.batch_size * self.n_kv_heads * self.head_dim * self._len * item
        return kv + sum(k.numel() * k.element_size() * 2 for k, _ in (self.cross or []))

    @property
    def allocated_nbytes(self) -> int:
        """Bytes actually allocated (capacity grows by doubling, so this is at most ~2x ``nbytes``)."""
        return sum(t.numel() * t.element_size() for t in self._k + self._v)

    def _reserve(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        cap = min(self.max_len, max(needed, 2 * self._capacity, 64))
        shape = (self.batch_size, self.n_kv_heads, cap, self.head_dim)
        grown_k, grown_v = [], []
        for layer in range(self.n_layers):
            # Normal tensors even when allocated inside generate()'s inference mode, so that the cache can
            # be extended later outside it (a tensor made in inference mode cannot be updated in place there).
            with torch.inference_mode(False):
                # empty, not zeros: only positions < len are ever read, each written before
                k = torch.empty(shape, dtype=self.dtype, device=self.device)
                v = torch.empty(shape, dtype=self.dtype, device=self.device)
            if self._capacity:
                k[:, :, : self._len] = self._k[layer][:, :, : self._len]
                v[:, :, : self._len] = self._v[layer][:, :, : self._len]
            grown_k.append(k)
            grown_v.append(v)
        self._k, self._v, self._capacity = grown_k, grown_v, cap

    def check_append(self, input_ids: torch.Tensor) -> None:
        """Raise if ``input_ids`` (B, n) cannot be appended (batch size or capacity)."""
        check_tensor("input_ids", input_ids, kind="int", dim=2)
        b, n = input_ids.shape
        if b != self.batch_size:
            raise ValueError(
                f"the cache was made for batch size {self.batch_size}, got input of batch size {b}"
            )
        if self._len + n > self.max_len:
            raise ValueError(
                f"cache overflow: {self._len} cached + {n} new positions > max_len={self.max_len}"
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys/values (B, Hkv, n, D) for ``layer``; return all keys/values so far.

        The length advances only in :meth:`commit`, after every layer has written, so a failed forward
        pass leaves the cache as it was.
        """
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in [0, {self.n_layers}), got {layer!r}")
        n = k.shape[2]
        if k.shape != (self.batch_size, self.n_kv_heads, n, self.head_dim):
            raise ValueError(
                f"keys of shape {tuple(k.shape)} do not fit a cache of "
                f"(B={self.batch_size}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim})"
            )
        if self._len + n > self.max_len:
            raise ValueError(
                f"cache overflow: {self._len} cached + {n} new positions > max_len={self.max_len}"
            )
        return self._append(layer, k, v)

    def _append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`update` without its checks, for a model that has checked this cache and its input
        (``anatomy.model._check_cache``: layers, heads, head_dim, batch size, room for the new positions)."""
        n = k.shape[2]
        end = self._len + n
        if end > self._capacity:
            self._reserve(end)
        # narrow + copy_ rather than slice assignment: the same write with a third of the Python work, and
        # decoding runs this once per layer per token. copy_ also casts to the cache's dtype.
        k_all, v_all = self._k[layer], self._v[layer]
        k_all.narrow(2, self._len, n).copy_(k)
        v_all.narrow(2, self._len, n).copy_(v)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def commit(self, input_ids: torch.Tensor) -> None:
        """Advance the length by the tokens every layer has just written."""
        check_tensor("input_ids", input_ids, kind="int", dim=2)
        self._len += input_ids.shape[1]
        with torch.inference_mode(False):  # a normal tensor even during generate()
            self.tokens = torch.cat([self.tokens, input_ids.to(self.device)], dim=1)

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` positions (e.g. to roll back a turn or a rejected draft)."""
        length = check_int("length", length, lo=0, hi=self._len)
        self._len = length
        self.tokens = self.tokens[:, :length]

    def clear(self) -> None:
        """Forget everything, keeping the allocation."""
        self.truncate(0)
        self.cross, self.source = None, None

    def keys(self, layer: int) -> torch.Tensor:
        """Cached keys of one layer, (B, n_kv_heads, len, head_dim)."""
        check_int("layer", layer, lo=0, hi=self.n_layers - 1)
        return self._k[layer][:, :, : self._len] if self._capacity else self._empty()

    def values(self, layer: int) -> torch.Tensor:
        """Cached values of one layer, (B, n_kv_heads, len, head_dim)."""
        check_int("layer", layer, lo=0, hi=self.n_layers - 1)
        return self._v[layer][:, :, : self._len] if self._capacity else self._empty()

    def _empty(self) -> torch.Tensor:
        return torch.empty(
            self.batch_size, self.n_kv_heads, 0, self.head_dim, dtype=self.dtype, device=self.device
        )


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    n_tokens: int = 1,
    bytes_per_elem: int = 2,
    batch_size: int = 1,
) -> int:
    """The KV-cache size formula: 2 (K and V) * layers * n_kv_heads * head_dim * tokens * bytes * batch."""
    n_layers, n_kv_heads, head_dim = (
        check_positive_int(name, value)
        for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim))
    )
    n_tokens = check_int("n_tokens", n_tokens, lo=0)
    bytes_per_elem = check_positive_int("bytes_per_elem", bytes_per_elem)
    batch_size = check_positive_int("batch_size", batch_size)
    return 2 * n_layers * n_kv_heads * head_dim * n_tokens * bytes_per_elem * batch_size
