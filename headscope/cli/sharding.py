"""How ``headscope score`` and ``headscope circuit`` run when split: ``--shard I/N`` (one part
file) or a torch.distributed launcher (every rank one shard, rank 0 writes the merged file); and
the ``merge`` command (head-score or edge-score parts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from headscope.errors import HeadscopeError
from headscope.scale.dist import Launch
from headscope.scale.shard import Shard


@dataclass
class ShardPlan:
    """This process's share of a ``score``/``circuit`` run: none, one ``--shard``, or one rank's.

    It picks the backend of :func:`headscope.plan.run` (:attr:`backend`) and says where this
    process writes (:meth:`output`); the splitting itself is :mod:`headscope.scale.backends`.
    """

    shard: Shard | None = None
    launch: Launch | None = None
    _device: str = field(default="cpu", repr=False)

    @property
    def distributed(self) -> bool:
        return self.launch is not None and self.launch.world_size > 1

    @property
    def active(self) -> bool:
        return self.shard is not None

    @property
    def prefix(self) -> str:
        return f"[rank {self.launch.rank}] " if self.distributed and self.launch else ""

    def device(self, device: str) -> str:
        """The device this process loads the model on (a rank's own GPU under a launcher)."""
        if self.distributed and self.launch is not None:
            from headscope.scale.dist import rank_device

            device = rank_device(device, self.launch)
        self._device = device
        return device

    def check(self, method: Any) -> None:
        """A one-line error before any work if ``method`` (a MethodInfo) cannot be split."""
        from headscope.scale.shard import refuse_unsharded

        if self.active:
            how = "without torchrun (or with --nproc-per-node 1)" if self.distributed else "without --shard"
            refuse_unsharded(method, how)

    @property
    def backend(self) -> Any:
        """The backend of :func:`headscope.plan.run` for this process."""
        from headscope.plan import LOCAL
        from headscope.scale.backends import DistributedBackend, ShardBackend

        if self.distributed and self.launch is not None:
            return DistributedBackend(self.launch, self._device)
        return ShardBackend(self.shard) if self.shard is not None else LOCAL

    def note(self, scores: Any) -> str | None:
        """``"shard 2/4: 36 of 144 heads"`` for a ``--shard`` part, else None."""
        from headscope.scale.shard import describe_part

        return describe_part(scores) if self.shard is not None and not self.distributed else None

    def shown(self, scores: Any) -> Any:
        """The rows to print: a ``--shard`` part's own units' rows, else all of ``scores``."""
        from headscope.scale.shard import shown_rows

        return shown_rows(scores) if self.shard is not None and not self.distributed else scores

    def output(self, out: Path) -> Path:
        """Where this process writes: the part file for ``--shard``, else ``out``."""
        from headscope.scale.shard import part_path

        return part_path(out, self.shard) if self.shard is not None and not self.distributed else out


def plan_shards(shard: str | None, plot: Path | None = None, export_kv_policy: Path | None = None,
                device_map: str | None = None) -> ShardPlan:
    """The plan from ``--shard`` and the launcher's environment (one-line errors for conflicts).

    ``--device-map`` under a launcher with several ranks per node would give every rank a model
    spread over all of the node's GPUs; it is refused unless ``CUDA_VISIBLE_DEVICES`` is set (by
    a wrapper giving each rank its own GPUs, see docs/scaling.md) or there is one rank per node.
    """
    import os

    from headscope.scale.dist import from_env
    from headscope.scale.shard import parse_shard

    launch = from_env()
    if launch is not None and launch.world_size > 1:
        if shard is not None:
            raise HeadscopeError(f"--shard {shard} under a launcher (WORLD_SIZE={launch.world_size}): the ranks are the "
                                 "shards; drop --shard, or run without torchrun.")
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        if device_map is not None and per_node > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
            raise HeadscopeError(
                f"--device-map with {per_node} ranks per node would spread every rank's model over all GPUs: use "
                "--nproc-per-node 1 (one model per node), or give each rank its GPUs with CUDA_VISIBLE_DEVICES "
                "(docs/scaling.md)."
            )
        return ShardPlan(Shard(launch.rank, launch.world_size), launch)
    if shard is None:
        return ShardPlan()
    parsed = parse_shard(shard)
    extra = [flag for flag, given in (("--plot", plot), ("--export-kv-policy", export_kv_policy)) if given is not None]
    if extra:
        hint = ("pass --plot to `headscope merge`" if extra[0] == "--plot"
                else "call headscope.kv.policy.export_kv_policy on the merged file")
        raise HeadscopeError(f"{extra[0]} needs the whole result: drop it from --shard runs ({hint}).")
    return ShardPlan(parsed)


def register(app: typer.Typer) -> None:
    """Add the ``merge`` command to the CLI app."""

    @app.command()
    def merge(
        parts: list[Path] = typer.Argument(..., help="the part files of one sharded run (*.shard-*-of-*.parquet)"),
        out: Path = typer.Option(..., "--out", help="the merged Parquet file"),
        top: int = typer.Option(10, "--top", min=1, help="heads (edges) to print per metric"),
        plot: Path | None = typer.Option(None, "--plot", help="write an interactive heatmap (circuit graph for edge scores) of the merged result (.html)"),
    ) -> None:
        """Merge the parts of a --shard run (`score` or `circuit`) into the file a single process would write.

        Refuses missing or duplicated shards and parts that disagree on model, task or options.
        """
        from headscope.cli.display import console, top_table
        from headscope.cli.paths import check_output
        from headscope.results.edge_scores import EdgeScores
        from headscope.scale.merge import merge_files

        out = check_output(out, ".parquet", "--out")
        if plot is not None:
            plot = check_output(plot, ".html", "--plot")
        scores = merge_files(list(parts))
        edges = isinstance(scores, EdgeScores)
        if edges:
            from headscope.cli.circuit import edge_table

            console.print(edge_table(scores, top))
        else:
            console.print(top_table(scores, k=top))
        scores.to_parquet(out)
        console.print(f"wrote {out} ({scores.provenance['world_size']} parts)")
        if plot is not None and edges:
            from headscope.plots.circuit import edge_circuit_graph
            from headscope.plots.save import save_html

            save_html(edge_circuit_graph(scores), plot)
            console.print(f"wrote {plot}")
        elif plot is not None:
            from headscope.plots import head_heatmap, save_html
            from headscope.plots.figures import all_metric_heatmaps

            save_html(all_metric_heatmaps(scores) if len(scores.metrics) > 1 else head_heatmap(scores), plot)
            console.print(f"wrote {plot}")
