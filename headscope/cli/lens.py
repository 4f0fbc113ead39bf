"""``headscope lens``: per-head lens decoding (training-free or trained) and lens training.

    headscope lens decode --model smollm2-135m --heads 18.6,23.2 --prompt "..." --k 10
    headscope lens decode --model smollm2-135m --heads 18.6 --prompt "..." --lens lens.safetensors
    headscope lens operations --model smollm2-135m --heads 23.2 --n 10
    headscope lens train --model smollm2-135m --heads 18.6,23.2 --steps 200 --out lens.safetensors \\
        --checkpoint-dir ckpt/ [--resume]

``decode`` prints the top promoted and suppressed tokens per head and position and can write
the tidy token frame (layer, head, position, direction, rank, token, token_id, logit) to
Parquet. ``train`` trains on CPython's pydoc topics by default (offline), prints the held-out
KL of the trained and the training-free lens per head, and saves the lens as safetensors.
"""

from __future__ import annotations

from pathlib import Path

import typer

from headscope.errors import HeadscopeError
from headscope.lens.train import DEFAULT_BATCH_TOKENS, DEFAULT_LR, DEFAULT_STEPS

lens_app = typer.Typer(help="Per-head lenses: decode heads to tokens; train Attention Lenses.", no_args_is_help=True)


def _positions(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise HeadscopeError(f"bad --positions '{text}': write e.g. -1 or 3,5,-1 or all.") from None


@lens_app.command()
def decode(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="alias, toy-*, .gguf, directory or hub id"),
    heads: str = typer.Option(..., "--heads", help="heads as LAYER.HEAD, e.g. 18.6,23.2"),
    prompt: str = typer.Option(..., "--prompt", help="the prompt text"),
    positions: str = typer.Option("-1", "--positions", help="positions to decode: -1 (last), 3,5,-1 or all"),
    k: int = typer.Option(10, "--k", min=1, help="tokens per direction"),
    ln: str = typer.Option("residual", "--ln", help="final-norm convention: residual or recompute"),
    lens: Path | None = typer.Option(None, "--lens", help="a trained lens (.safetensors) instead of the training-free lens"),
    out: Path | None = typer.Option(None, "--out", help="write the tidy token frame (.parquet)"),
) -> None:
    """Decode heads' outputs to their top promoted / suppressed tokens."""
    from rich.table import Table

    from headscope.cli.display import console
    from headscope.cli.paths import check_output
    from headscope.heads_text import parse_head_list
    from headscope.lens.decode import decode_heads
    from headscope.lens.store import load_lens, read_lens_metadata
    from headscope.models import load_model

    if out is not None:
        out = check_output(out, ".parquet", "--out")
    parse_head_list(heads)
    wanted_positions = _positions(positions)
    if lens is not None:
        read_lens_metadata(lens)  # a missing or damaged lens file fails before the model loads
    loaded = load_model(model)
    chosen = loaded.parse_heads(heads)
    trained = load_lens(loaded, lens) if lens is not None else None
    frame = decode_heads(loaded, prompt, chosen, wanted_positions, k=k, ln=ln, lens=trained)
    for (layer, head, pos), grp in frame.groupby(["layer", "head", "position"], sort=False):
        table = Table(title=f"head {layer}.{head} @ position {pos} ({grp['input_token'].iloc[0]!r}) -- {grp['lens'].iloc[0]}")
        table.add_column("rank")
        table.add_column("promoted")
        table.add_column("logit")
        table.add_column("suppressed")
        table.add_column("logit ")
        up, down = grp[grp.direction == "promoted"], grp[grp.direction == "suppressed"]
        for (_, a), (_, b) in zip(up.iterrows(), down.iterrows(), strict=True):
            table.add_row(str(a["rank"]), repr(a["token"]), f"{a['logit']:.3f}", repr(b["token"]), f"{b['logit']:.3f}")
        console.print(table)
    if out is not None:
        from headscope.results.atomic import atomic_write

        with atomic_write(out, ".parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        console.print(f"wrote {out}")


@lens_app.command()
def train(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="alias, toy-*, .gguf, directory or hub id"),
    heads: str = typer.Option(..., "--heads", help="heads as LAYER.HEAD, e.g. 18.6,23.2"),
    out: Path = typer.Option(..., "--out", help="where to save the lens (.safetensors)"),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", min=0),
    lr: float = typer.Option(DEFAULT_LR, "--lr"),
    batch_tokens: int = typer.Option(DEFAULT_BATCH_TOKENS, "--batch-tokens", min=1, help="positions per step"),
    param: str = typer.Option("factored", "--param", help="factored (A W_U + b) or full (d_model x d_vocab)"),
    source: str = typer.Option("pydoc", "--corpus", help="pydoc (offline), a .txt file or a hub dataset id"),
    seq_len: int = typer.Option(64, "--seq-len", min=2),
    n_train: int = typer.Option(256, "--n-train", min=1, help="training windows"),
    n_eval: int = typer.Option(16, "--n-eval", min=1, help="held-out windows"),
    checkpoint_dir: Path | None = typer.Option(None, "--checkpoint-dir"),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint"),
    seed: int = typer.Option(0, "--seed"),
    scores: Path | None = typer.Option(None, "--scores", help="also write held-out KLs as HeadScores (.parquet)"),
) -> None:
    """Train per-head lenses with KL to the model's output; print held-out KL vs the training-free lens."""
    from rich.table import Table

    from headscope.analyzers.trained_lens import trained_lens
    from headscope.cli.display import console
    from headscope.cli.paths import check_output
    from headscope.heads_text import parse_head_list
    from headscope.lens.train import check_checkpoint_dir, check_resume, check_settings
    from headscope.models import load_model
    from headscope.tasks import make_task

    out = check_output(out, ".safetensors", "--out")
    if scores is not None:
        scores = check_output(scores, ".parquet", "--scores")
    # everything that can be checked without the model, before loading it
    wanted = parse_head_list(heads)
    check_settings(steps, lr, batch_tokens, checkpoint_every)
    ckdir = check_checkpoint_dir(checkpoint_dir, resume)
    task = make_task("corpus", source=source, seq_len=seq_len, n_train=n_train, n_eval=n_eval)
    if resume and ckdir is not None:
        check_resume(ckdir, {"heads": ",".join(f"{a}.{b}" for a, b in wanted), "param": param, "lr": lr,
                             "batch_tokens": batch_tokens, "seed": seed, "corpus": task.describe()}, steps)
    loaded = load_model(model)
    loaded.parse_heads(heads)  # ranges, before collecting data
    result = trained_lens(loaded, task, heads=heads, steps=steps, lr=lr, batch_tokens=batch_tokens, param=param, seed=seed,
                          checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, checkpoint_every=checkpoint_every,
                          resume=resume, save=str(out), progress=True)
    table = Table(title=f"held-out KL(p_model || lens), nats ({steps} steps, {param})")
    for col in ("head", "training-free", "trained", "gain", "best constant"):
        table.add_column(col)
    for head in loaded.parse_heads(heads):
        row = {m: result[(result["metric"] == m) & (result["layer"] == head[0]) & (result["head"] == head[1])]["score"].iloc[0]
               for m in ("heldout_kl_free", "heldout_kl_trained", "kl_gain", "heldout_kl_constant")}
        table.add_row(f"{head[0]}.{head[1]}", f"{row['heldout_kl_free']:.3f}", f"{row['heldout_kl_trained']:.3f}",
                      f"{row['kl_gain']:.3f}", f"{row['heldout_kl_constant']:.3f}")
    console.print(table)
    console.print(f"wrote {out}")
    if scores is not None:
        result.to_parquet(scores)
        console.print(f"wrote {scores}")


@lens_app.command()
def operations(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="alias, toy-*, .gguf, directory or hub id"),
    heads: str = typer.Option(..., "--heads", help="heads as LAYER.HEAD, e.g. 23.2,18.6"),
    relation: str = typer.Option("all", "--relation", help="source tokens: a built-in relation's sources, or all of them"),
    n: int = typer.Option(10, "--n", min=1, help="mappings per head"),
    out: Path | None = typer.Option(None, "--out", help="write the tidy frame (.parquet)"),
) -> None:
    """MAPS salient operations: each head's strongest source -> target token mappings (weights only)."""
    from rich.table import Table

    from headscope.analyzers.maps import salient_mappings
    from headscope.cli.display import console
    from headscope.cli.paths import check_output
    from headscope.heads_text import parse_head_list
    from headscope.models import load_model
    from headscope.tasks.relations import RelationTask, builtin_relations

    if out is not None:
        out = check_output(out, ".parquet", "--out")
    parse_head_list(heads)
    loaded = load_model(model)
    names = list(builtin_relations()) if relation == "all" else [relation]
    src: list[int] = []
    for name in names:
        src += RelationTask(relation=name).pairs(loaded)[0]
    frame = salient_mappings(loaded, loaded.parse_heads(heads), list(dict.fromkeys(src)), n=n)
    for (layer, head), grp in frame.groupby(["layer", "head"], sort=False):
        table = Table(title=f"head {layer}.{head}: salient mappings (z-scored OV logits)")
        for col in ("rank", "source", "target", "z"):
            table.add_column(col)
        for r in grp.itertuples():
            table.add_row(str(r.rank), repr(r.source), repr(r.target), f"{r.zscore:.2f}")
        console.print(table)
    if out is not None:
        from headscope.results.atomic import atomic_write

        with atomic_write(out, ".parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the ``lens`` sub-app to the CLI."""
    app.add_typer(lens_app, name="lens")
