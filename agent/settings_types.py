"""The base struct and the constrained numbers every configuration table is made of."""

from __future__ import annotations

from typing import Annotated

import msgspec

Positive = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]


class Table(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A TOML table: frozen, keyword-only, unknown keys are errors, defaults left out."""
