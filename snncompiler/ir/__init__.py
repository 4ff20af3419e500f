"""The intermediate representation every stage shares: the graph (:mod:`.graph`) and the neuron
model (:mod:`.neuron`). ``from snncompiler.ir import Graph, Node, ...`` keeps working as it did
when this was one module."""

from __future__ import annotations

from .graph import Graph, IRError, Node, Value, check_finite_parameters
from .neuron import NeuronSpec

__all__ = ["Graph", "IRError", "Node", "Value", "check_finite_parameters", "NeuronSpec"]
