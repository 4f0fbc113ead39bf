"""The edge graph of a transformer: components that write to the residual stream and the inputs
that read from it (Wang et al. 2022, App. B; Conmy et al. 2023, "Towards automated circuit
discovery", Sec. 2: heads with separate query, key and value inputs).

Senders (each writes one vector per position into the residual stream):

* ``input``: the embedding (token, position and the model's embedding scale), the residual
  entering block 0;
* ``a{l}.h{h}``: attention head ``h`` of layer ``l``. Its output is what the attention sublayer
  adds to the residual through that head: ``z_h @ W_O^h`` (no bias), or on post-norm families
  (Gemma-2/3, OLMo-2) the change of the post-attention-norm output when only that head's z
  changes, every other head held at its value in the same run (see :mod:`.exact`);
* ``m{l}``: the MLP of layer ``l`` (what its sublayer adds to the residual).

Receivers (each reads the residual stream):

* ``a{l}.h{h}`` input ``q``: the residual feeding head ``h``'s query (through ``ln1``);
* ``a{l}.kv{g}`` input ``k`` / ``v`` (or ``a{l}.h{g}`` on a model without GQA): the residual
  feeding the key / value projection of KV head ``g``. Under grouped-query attention only KV
  heads have key and value inputs, so an edge into a key or value belongs to the KV head and
  the query heads that share it (``kv_group`` lists them); it is **never split** among them;
* ``m{l}`` input ``in``: the MLP's input residual (before ``ln2``);
* ``logits`` input ``in``: the final residual (before the final norm).

Edges: every sender into every receiver that reads the residual after the sender wrote it.
With residual points ``2l`` (entering block ``l``), ``2l + 1`` (between attention and MLP) and
``2L`` (final), attention ``l`` reads point ``2l`` and writes from ``2l + 1``; the MLP reads
``2l + 1`` and writes from ``2l + 2`` (parallel-residual blocks such as GPT-NeoX: the MLP reads
``2l``, so attention ``l`` does not feed MLP ``l``).
"""

from __future__ import annotations

from dataclasses import dataclass

from headscope.errors import HeadscopeError
from headscope.models.facts import arch_facts

RECEIVER_INPUTS = ("q", "k", "v", "in")


@dataclass(frozen=True)
class Sender:
    """A component that writes to the residual stream.

    Attributes:
        name: ``input``, ``a{l}.h{h}`` or ``m{l}``.
        kind: ``input``, ``head`` or ``mlp``.
        layer: block index (-1 for ``input``).
        unit: head index (heads only, else -1).
        writes: the first residual point that holds its output.
    """

    name: str
    kind: str
    layer: int
    unit: int
    writes: int


@dataclass(frozen=True)
class Receiver:
    """One input of a component that reads the residual stream.

    Attributes:
        name: ``a{l}.h{h}`` (q), ``a{l}.kv{g}`` / ``a{l}.h{g}`` (k, v), ``m{l}`` or ``logits``.
        input: ``q``, ``k``, ``v`` or ``in``.
        kind: ``head``, ``mlp`` or ``logits``.
        layer: block index (``n_layers`` for the logits).
        unit: query head (q), KV head (k, v), else -1.
        reads: the residual point it reads.
        kv_group: the query heads whose computation this input feeds.
    """

    name: str
    input: str
    kind: str
    layer: int
    unit: int
    reads: int
    kv_group: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.name}<{self.input}>"


@dataclass(frozen=True)
class Edge:
    sender: Sender
    receiver: Receiver

    @property
    def key(self) -> str:
        return f"{self.sender.name}->{self.receiver.key}"


def parallel_residual(model: object) -> bool:
    """Whether attention and MLP of a block both read the block's input (GPT-NeoX style);
    the model's :class:`headscope.models.facts.ArchFacts`."""
    return arch_facts(model).parallel_residual


def kv_name(model: object, layer: int, g: int) -> str:
    """Receiver name of KV head ``g``: ``a{l}.kv{g}`` under GQA, ``a{l}.h{g}`` otherwise."""
    gqa = model.n_kv_heads < model.n_heads  # type: ignore[attr-defined]
    return f"a{layer}.kv{g}" if gqa else f"a{layer}.h{g}"


@dataclass
class EdgeGraph:
    """All senders, receivers and edges of a model (see the module docstring).

    Attributes:
        senders: in residual order (input, then per layer its heads and MLP).
        receivers: in residual order (per layer: q of each head, k and v of each KV head, MLP;
            then the logits).
        edges: every valid (sender, receiver) pair, ordered by receiver then sender.
        parallel: parallel-residual blocks.
    """

    senders: list[Sender]
    receivers: list[Receiver]
    edges: list[Edge]
    parallel: bool

    @classmethod
    def of(cls, model: object) -> EdgeGraph:
        """The full edge graph of a :class:`headscope.models.Model`."""
        n_layers, n_heads, n_kv = model.n_layers, model.n_heads, model.n_kv_heads  # type: ignore[attr-defined]
        parallel = parallel_residual(model)
        groups = model.kv_groups()  # type: ignore[attr-defined]
        senders = [Sender("input", "input", -1, -1, 0)]
        receivers: list[Receiver] = []
        for layer in range(n_layers):
            attn_reads, attn_writes = 2 * layer, 2 * layer + 1
            mlp_reads = 2 * layer if parallel else 2 * layer + 1
            senders += [Sender(f"a{layer}.h{h}", "head", layer, h, attn_writes) for h in range(n_heads)]
            senders.append(Sender(f"m{layer}", "mlp", layer, -1, 2 * layer + 2))
            receivers += [Receiver(f"a{layer}.h{h}", "q", "head", layer, h, attn_reads, (h,)) for h in range(n_heads)]
            for act in ("k", "v"):
                receivers += [
                    Receiver(kv_name(model, layer, g), act, "head", layer, g, attn_reads, tuple(groups[g]))
                    for g in range(n_kv)
                ]
            receivers.append(Receiver(f"m{layer}", "in", "mlp", layer, -1, mlp_reads))
        receivers.append(Receiver("logits", "in", "logits", n_layers, -1, 2 * n_layers))
        edges = [Edge(s, r) for r in receivers for s in senders if s.writes <= r.reads]
        return cls(senders, receivers, edges, parallel)

    def sender(self, name: str) -> Sender:
        for s in self.senders:
            if s.name == name:
                return s
        raise HeadscopeError(f"no sender '{name}' in this model: senders are input, a<L>.h<H>, m<L>.")

    def receiver(self, name: str, input: str) -> Receiver:
        for r in self.receivers:
            if r.name == name and r.input == input:
                return r
        raise HeadscopeError(
            f"no receiver '{name}' with input '{input}': q is per query head (a<L>.h<H>), k/v per KV head, MLPs and logits take 'in'."
        )

    def edge(self, sender: str, receiver: str, input: str) -> Edge:
        s, r = self.sender(sender), self.receiver(receiver, input)
        if s.writes > r.reads:
            raise HeadscopeError(f"{sender} writes after {receiver} reads: there is no edge {sender}->{receiver}<{input}>.")
        return Edge(s, r)
