"""Backends of :func:`headscope.plan.run` that split a sweep: one shard, or torch.distributed ranks.

``run(call, model, backend)`` is the one execution seam (nnsight's ``Backend.__call__``):

- :class:`headscope.plan.Local` runs the whole call in this process;
- :class:`ShardBackend` runs shard ``I/N`` of it (``--shard I/N``, a Slurm array task): only its
  units, its part file merged later by ``headscope merge`` (:mod:`headscope.scale.merge`);
- :class:`DistributedBackend` runs one shard per rank under a launcher (``torchrun``): every
  rank loads the model and computes its shard, all parts (or failures) are gathered, and rank 0
  returns the merged result (other ranks return None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headscope.errors import HeadscopeError
from headscope.plan import Call, resolve_model
from headscope.scale.dist import Launch
from headscope.scale.shard import Shard, run_call_shard


@dataclass(frozen=True)
class ShardBackend:
    """Run one shard of the call; errors name the shard."""

    shard: Shard

    def __call__(self, call: Call, model: Any) -> Any:
        try:
            return run_call_shard(call, resolve_model(model), self.shard)
        except HeadscopeError as exc:
            named = str(exc).startswith(f"shard {self.shard}:")  # the shard's own errors name it already
            raise HeadscopeError(str(exc) if named else f"shard {self.shard}: {exc}") from None


@dataclass(frozen=True)
class DistributedBackend:
    """One shard per rank of a launcher; rank 0 returns the merged result, other ranks None.

    Attributes:
        launch: the launcher's ranks.
        device: the device this rank's model runs on (the process group's backend follows it).
    """

    launch: Launch
    device: str = "cpu"

    def __call__(self, call: Call, model: Any) -> Any:
        from headscope.scale import dist
        from headscope.scale.merge import merge_parts
        from headscope.scale.wire import decode, describe_failure, encode, encode_failure

        shard = Shard(self.launch.rank, self.launch.world_size)
        where = dist.init(self.launch, self.device)
        try:
            try:
                payload = encode(run_call_shard(call, resolve_model(model), shard))
            except Exception as exc:  # noqa: BLE001 - sent to every rank, which all fail naming this shard
                payload = encode_failure(describe_failure(exc))
            got = [decode(b) for b in dist.all_gather_bytes(payload, where)]
        finally:
            dist.finish()
        failed = [(i, g) for i, g in enumerate(got) if isinstance(g, str)]
        if failed:
            n = self.launch.world_size
            raise HeadscopeError("; ".join(f"shard {i}/{n} (rank {i}) failed: {msg}" for i, msg in failed))
        if self.launch.rank != 0:
            return None
        return merge_parts(got, [f"rank {i}" for i in range(len(got))], mode="torch.distributed")
