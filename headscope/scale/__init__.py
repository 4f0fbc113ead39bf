"""Scaling sweeps: split an analyzer's independent units over shards (``--shard I/N``, Slurm
arrays) or torch.distributed ranks (``torchrun``), and merge the parts into one result.
See docs/scaling.md."""

from headscope.scale.merge import merge_files, merge_parts
from headscope.scale.shard import Shard, parse_shard, part_path, run_shard
from headscope.scale.spec import ShardSpec, by_head, by_layer

__all__ = ["Shard", "ShardSpec", "by_head", "by_layer", "merge_files", "merge_parts", "parse_shard", "part_path", "run_shard"]
