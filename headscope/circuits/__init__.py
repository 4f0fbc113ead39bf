"""Circuits: edges between components (senders into receivers' q/k/v/MLP/logits inputs), exact
edge patching, edge attribution (EAP, EAP-IG), verified pruning and head composition."""

from headscope.circuits.graph import Edge, EdgeGraph, Receiver, Sender

__all__ = ["Edge", "EdgeGraph", "Receiver", "Sender"]
