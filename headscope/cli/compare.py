"""``headscope compare RUN1 RUN2 [--out diff.html]``: diff two results head by head, or, for two
EdgeScores tables (``headscope circuit``), their circuits' edge and node overlap and the rank
agreement of their edge scores (:mod:`headscope.circuits.overlap`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command to the CLI app."""

    @app.command()
    def compare(
        run_a: Path = typer.Argument(..., help="results A (.parquet)"),
        run_b: Path = typer.Argument(..., help="results B (.parquet)"),
        out: Path | None = typer.Option(None, "--out", help="write the comparison figure and tables (.html)"),
        metric_a: str | None = typer.Option(None, "--metric-a", help="metric of A (default: every shared metric)"),
        metric_b: str | None = typer.Option(None, "--metric-b", help="metric of B"),
        top: int = typer.Option(10, "--top", min=1, help="k for the top-k overlap and the rows printed"),
        csv: Path | None = typer.Option(None, "--csv", help="also write the aligned per-head table (.csv)"),
    ) -> None:
        """Compare two results (two models, tasks or seeds): rank correlation, top-k overlap, diffs."""
        from rich.table import Table

        from headscope.cli.display import console
        from headscope.cli.paths import check_output
        from headscope.report.compare import compare_results
        from headscope.results import read_parquet

        if out is not None:
            out = check_output(out, ".html", "--out")
        if csv is not None:
            csv = check_output(csv, ".csv", "--csv")
        kinds = [is_edge_table(run_a), is_edge_table(run_b)]
        if any(kinds):
            if not all(kinds):
                from headscope.errors import HeadscopeError

                edge, head = (run_a, run_b) if kinds[0] else (run_b, run_a)
                if not head.expanduser().is_file():
                    raise HeadscopeError(f"no such results file: {head}. Check the path.")
                raise HeadscopeError(f"{edge} holds edge scores but {head} does not: compare two EdgeScores tables "
                                     "(headscope circuit) or two head results.")
            if out is not None or metric_a is not None or metric_b is not None:
                from headscope.errors import HeadscopeError

                raise HeadscopeError("--out, --metric-a and --metric-b are for head results; for edge tables use --csv.")
            compare_edges(run_a, run_b, top, csv)
            return
        a, b = read_parquet(run_a), read_parquet(run_b)
        cmp = compare_results(a, b, metric_a=metric_a, metric_b=metric_b, k=top)
        console.print(f"A = {run_a} ({cmp.name_a})\nB = {run_b} ({cmp.name_b})")
        table = Table(title="agreement per metric")
        for col in ("metric", "heads A/B/both", "spearman", f"top-{top} overlap", "mean |B - A|"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        undefined = []
        for row in cmp.summary.to_dict("records"):
            overlap = row[f"top{top}_overlap"]
            if overlap != overlap:
                undefined.append((row["metric"], row["heads_both"]))
            table.add_row(row["metric"], f"{row['heads_a']}/{row['heads_b']}/{row['heads_both']}",
                          f"{row['spearman']:.3f}", "n/a" if overlap != overlap else f"{overlap:.2f}",
                          f"{row['mean_abs_diff']:.4g}")
        console.print(table)
        if undefined:
            fewest = min(n for _, n in undefined)
            console.print(f"note: top-{top} overlap is n/a for {', '.join(m for m, _ in undefined)}: --top {top} is not "
                          f"below the {fewest} heads both results share, so both top sets would be every head; "
                          f"pass --top {max(1, fewest // 4)} (or any k < {fewest}).")
        diffs = cmp.table.dropna(subset=["diff"])
        biggest = diffs.reindex(diffs["diff"].abs().sort_values(ascending=False).index).head(top)
        t2 = Table(title=f"largest differences (B - A), top {top}")
        for col in ("metric", "head", "score A", "score B", "B - A", "rank A", "rank B"):
            t2.add_column(col, justify="left" if col in ("metric", "head") else "right")
        for r in biggest.itertuples():
            t2.add_row(r.metric, r.label, f"{r.score_a:.4f}", f"{r.score_b:.4f}", f"{r.diff:+.4f}",
                       f"{r.rank_a:.0f}", f"{r.rank_b:.0f}")
        console.print(t2)
        if csv is not None:
            from headscope.results.atomic import atomic_write

            with atomic_write(csv) as tmp:
                cmp.table.to_csv(tmp, index=False)
            console.print(f"wrote {csv}")
        if out is not None:
            from headscope.report.compare import write_comparison_html

            console.print(f"wrote {write_comparison_html(cmp, out)}")


def is_edge_table(path: Path) -> bool:
    """Whether ``path`` is a readable Parquet file with EdgeScores' edge columns (else False,
    and the head-result reader gives the one-line error)."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(Path(path).expanduser()).names)
    except Exception:  # noqa: BLE001 - missing or unreadable: read_parquet explains
        return False
    return {"sender", "receiver", "receiver_input", "circuit"} <= names


def compare_edges(run_a: Path, run_b: Path, top: int, csv: Path | None) -> None:
    """Print the circuit overlap (edges, nodes) and the score agreement of two EdgeScores files."""
    import pandas as pd
    from rich.table import Table

    from headscope.circuits.overlap import KEY, circuit_overlap, describe
    from headscope.cli.display import console
    from headscope.results.edge_scores import read_edge_scores

    a, b = read_edge_scores(run_a), read_edge_scores(run_b)
    cmp = circuit_overlap(a, b)
    console.print(f"A = {run_a} ({describe(a)})\nB = {run_b} ({describe(b)})")
    table = Table(title="circuit overlap")
    for col in ("", "A", "B", "both", "union", "Jaccard"):
        table.add_column(col, justify="left" if not col else "right")
    for name in ("edges", "nodes"):
        s = cmp[name]
        table.add_row(name, str(s["a"]), str(s["b"]), str(s["both"]), str(s["union"]), f"{s['jaccard']:.3f}")
    console.print(table)
    console.print(f"spearman of the edge scores over the {cmp['shared_edges']} edges both tables have: {cmp['spearman']:.3f}")
    console.print(f"nodes in both: {', '.join(cmp['nodes_both']) or 'none'}")
    for side in ("a", "b"):
        only = cmp[f"edges_only_{side}"]
        more = f" (+{len(only) - top} more)" if len(only) > top else ""
        console.print(f"circuit edges only in {side.upper()}: {', '.join(only[:top]) or 'none'}{more}")
    if csv is not None:
        from headscope.results.atomic import atomic_write

        merged = pd.DataFrame(a)[[*KEY, "score", "circuit"]].merge(
            pd.DataFrame(b)[[*KEY, "score", "circuit"]], on=KEY, how="outer", suffixes=("_a", "_b"))
        with atomic_write(csv) as tmp:
            merged.to_csv(tmp, index=False)
        console.print(f"wrote {csv}")
