"""The functional / out-variant choice every op wrapper with several outputs makes."""

from __future__ import annotations

import torch


def functional_or_out(name: str, args: tuple, **outputs: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``torch.ops.glm52.<name>(*args)`` when no output buffer is given; ``<name>_out(*args,
    **outputs)`` when all are (returning them); a ``ValueError`` naming them when only some are."""
    given = [t is not None for t in outputs.values()]
    if not any(given):
        return getattr(torch.ops.glm52, name)(*args)
    if not all(given):
        names = " and ".join(f"'{k}'" for k in outputs)
        raise ValueError(f"{name}: pass both {names}, or neither")
    getattr(torch.ops.glm52, f"{name}_out")(*args, **outputs)
    return tuple(outputs.values())
