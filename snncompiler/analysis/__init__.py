"""What a model costs and how it converts: :mod:`.summary` (the ``snnc inspect`` table),
:mod:`.metrics` (accuracy, synaptic operations, energy), :mod:`.diagnostics` (per-layer errors)."""
