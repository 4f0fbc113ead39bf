"""HeadScores or EdgeScores as bytes (Parquet in memory, provenance in the schema metadata) for
sending parts between ranks: the same format as the files, and no pickle (``torch.distributed``'s
``*_object`` collectives pickle, so headscope sends these bytes as uint8 tensors instead).

The first byte says what follows: ``P`` HeadScores, ``G`` EdgeScores (a circuit method's
part), ``E`` a failed shard's message."""

from __future__ import annotations

import json

import pandas as pd

from headscope.errors import HeadscopeError
from headscope.results.edge_scores import EdgeScores
from headscope.results.head_scores import METADATA_KEY, HeadScores

OK, EDGES, FAILED = b"P", b"G", b"E"


def encode(scores: HeadScores | EdgeScores) -> bytes:
    """``scores`` as ``b"P"`` (``b"G"`` for EdgeScores) + Parquet bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(pd.DataFrame(scores), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(scores.provenance, default=str).encode()
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink)
    return (EDGES if isinstance(scores, EdgeScores) else OK) + sink.getvalue().to_pybytes()


def encode_failure(message: str) -> bytes:
    """A failed shard's message as ``b"E"`` + UTF-8."""
    return FAILED + message.encode()


def decode(payload: bytes) -> HeadScores | EdgeScores | str:
    """The HeadScores (EdgeScores) of :func:`encode`, or the message of :func:`encode_failure`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind, body = payload[:1], payload[1:]
    if kind == FAILED:
        return body.decode(errors="replace")
    if kind not in (OK, EDGES):
        raise HeadscopeError("a rank sent an unreadable part: rerun with one headscope version on every rank.")
    table = pq.read_table(pa.BufferReader(body))
    out = (EdgeScores if kind == EDGES else HeadScores)(table.to_pandas())
    out.provenance = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return out


def describe_failure(exc: BaseException) -> str:
    """One line for a shard's exception (user errors as they are, others with their type)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, HeadscopeError) else f"internal error {type(exc).__name__}: {text}"


__all__ = ["decode", "describe_failure", "encode", "encode_failure"]
