"""No model with NaN or infinite weights is written: every writer of a model or adapter (training's output and
candidates, built bases, replicas) checks the tensors it is about to save, and refuses in one line."""

from __future__ import annotations

from kdsum.errors import KdsumError


class NonFiniteWeightsError(KdsumError):
    """A model whose weights hold NaN or infinity (a diverged run): nothing is written."""


def non_finite_tensors(model, trainable_only: bool = False) -> tuple[list[str], int]:
    """Names of the parameters holding NaN or ±Inf, and how many were checked (``trainable_only``: those an
    adapter or a fine-tune saves)."""
    import torch

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    with torch.no_grad():
        bad = [n for n, p in params if not bool(torch.isfinite(p).all())]
    return bad, len(params)


def check_finite_weights(model, what: str, trainable_only: bool = False, hint: str = "") -> None:
    """Refuse to write ``what`` when any (trainable) tensor of ``model`` is not finite."""
    bad, checked = non_finite_tensors(model, trainable_only)
    if bad:
        raise NonFiniteWeightsError(
            f"{what}: {len(bad)} of {checked} weight tensors hold NaN or infinity (first: {bad[0]}); "
            f"nothing written{f'; {hint}' if hint else ''}"
        )
