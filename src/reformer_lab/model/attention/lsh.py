"""Shared-QK LSH attention (sec 2, 3 and appendix A).

Per head and hash round r:
  1. hash the shared query/key vectors, h(x) = argmax([xR; -xR]);
  2. sort positions by (bucket, position); padding sorts after every real token;
  3. split the sorted sequence into chunks of `bucket_size`; each chunk attends to itself and
     the chunk before it (`chunked.py`), with causal masks on the original positions;
  4. undo the sort, giving o_r(i) and its log-normaliser z_r(i).
Rounds are merged as in appendix A: o(i) = sum_r exp(z_r(i) - logsumexp_r' z_r'(i)) o_r(i).

Known subtlety (causal mode): which earlier keys share a query's chunk depends on the hashes
of other tokens, later ones included, so chunk *membership* is not causal. Causality holds for
the computation: no output depends through any score or value on a later position, so the
gradient of output i with respect to input j > i is exactly zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .hashing import bucket_factors, default_n_buckets, draw_rotations, hash_buckets, mix_seed
from .lsh_rounds import HashRounds, attend_all_rounds

EVAL_STEP = -1  # the step id of the fixed eval rotations


class LSHAttentionCore(nn.Module):
    """(B, H, L, d) queries, keys, values -> (B, H, L, d), L a multiple of bucket_size.

    Keys None: the shared-QK keys, the queries normalised (sec 2), formed where they are used.

    `plan` is a per-call dict in which the sort order is stored the first time and read back
    when the reversible backward recomputes the layer, so it sees the very same buckets.
    """

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        bucket_size: int,
        n_hashes: int,
        causal: bool,
        n_buckets: int | None,
        allow_duplicate_attention: bool,
        attend_across_buckets: bool,
        seed: int,
        layer_index: int,
        backend: str,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.bucket_size, self.n_hashes, self.causal = bucket_size, n_hashes, causal
        self.n_buckets = n_buckets
        self.allow_duplicate_attention = allow_duplicate_attention
        self.attend_across_buckets = attend_across_buckets
        self.seed, self.layer_index, self.backend = seed, layer_index, backend
        # Training steps taken: the training rotations are a function of it, and it is saved
        # with checkpoints, so a resumed run hashes exactly as the uninterrupted one.
        self.register_buffer("hash_step", torch.zeros((), dtype=torch.long))
        self._next_step = 0  # host copy of hash_step: reading the buffer would sync the GPU
        self._eval_rotations: dict[tuple, list[Tensor]] = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._next_step = int(self.hash_step)  # resume from the checkpoint's step

    # --- hashing --------------------------------------------------------------------
    def rotations(
        self, factors: tuple[int, ...], n_hashes: int, device: torch.device, step: int
    ) -> list[Tensor]:
        """Rotations of every head for a training step, or the fixed eval ones (step -1)."""
        if step != EVAL_STEP:
            seed = mix_seed(self.seed, self.layer_index, step)
            return draw_rotations(factors, self.heads, n_hashes, self.head_dim, seed, device)
        key = (factors, n_hashes, device)
        if key not in self._eval_rotations:
            seed = mix_seed(self.seed, self.layer_index, EVAL_STEP)
            self._eval_rotations[key] = draw_rotations(
                factors, self.heads, n_hashes, self.head_dim, seed, device
            )
        return self._eval_rotations[key]

    def buckets(
        self,
        qk: Tensor,
        key_valid: Tensor | None,
        n_hashes: int,
        heads: slice | None = None,
        step: int = EVAL_STEP,
    ) -> Tensor:
        """(B, h, L, d) -> (B, h, R, L) int32 bucket ids of heads `heads` (all by default) at a
        training step (or with the eval rotations); padding gets the id one past the last."""
        heads = heads if heads is not None else slice(0, self.heads)
        L = qk.shape[2]
        n_buckets = self.n_buckets or default_n_buckets(L, self.bucket_size)
        factors = bucket_factors(n_buckets)
        rotations = [r[heads] for r in self.rotations(factors, n_hashes, qk.device, step)]
        return hash_buckets(qk, rotations, factors, key_valid, self.backend)

    # --- attention ------------------------------------------------------------------
    def forward(
        self,
        q: Tensor,
        k: Tensor | None,
        v: Tensor,
        key_valid: Tensor | None,
        *,
        n_hashes: int | None = None,
        plan: dict | None = None,
        heads: slice | None = None,
    ) -> Tensor:
        heads = heads if heads is not None else slice(0, self.heads)
        R = n_hashes or self.n_hashes
        C = self.bucket_size
        key = f"order{heads.start}"
        if plan is not None and key in plan:
            order = plan[key]  # (B, h, R, L) int32
            buckets = plan.get(f"buckets{heads.start}")
            R = order.shape[2]
        else:
            step = EVAL_STEP
            if self.training:
                # One fresh draw per forward pass: the first head group advances the step,
                # the others hash with the same rotations.
                if heads.start == 0:
                    self._next_step += 1
                    self.hash_step.fill_(self._next_step)
                step = self._next_step - 1
            with torch.no_grad():
                buckets = self.buckets(q.detach(), key_valid, R, heads, step)  # (B, h, R, L)
                # Sort by (bucket, position): a stable sort of the buckets keeps positions in
                # order within each bucket (bucket ids stay far below 2^31).
                # int32: the fused kernels read it so, the torch path widens one round at a time
                order = torch.sort(buckets, dim=-1, stable=True).indices
                order = order.to(torch.int32)
            if plan is not None:
                plan[key] = order
                if not self.attend_across_buckets:
                    plan[f"buckets{heads.start}"] = buckets

        rounds = HashRounds(
            order=order,
            key_valid=key_valid,
            buckets=None if self.attend_across_buckets else buckets,
            chunk_size=C,
            causal=self.causal,
            dedup=not self.allow_duplicate_attention,
            backend=self.backend,
        )
        return attend_all_rounds(q, k, v, rounds)  # (B, H, L, d)
