"""Recipe switches a base's family cannot honour: ``auto`` turns them off, ``true`` is refused.

Each family lists what it cannot do and why (``Family.limits`` in ctscribe.models, e.g. packing through
linear-attention layers that carry state along a row). Applied once, right after the family is read
from config.json, so a refusal comes before any weight loads and the run folder records what ran.
"""

from __future__ import annotations

import dataclasses
import logging

from ctscribe.models import Family
from ctscribe.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)


def apply_family_limits(recipe: Recipe, family: Family) -> Recipe:
    """``recipe`` with each switch ``family`` cannot honour off (one log line each, naming the family and
    the reason) where it says ``auto``; raises :class:`RecipeError` where it says ``true``."""
    off = {}
    for key, reason in family.limits.items():
        value = getattr(recipe, key)
        if value is True:
            raise RecipeError(f"{key}: true is not supported for {family.name}: {reason}; use auto or false")
        if value == "auto":
            log.info("%s off for %s: %s", key, family.name, reason)
            off[key] = False
    return dataclasses.replace(recipe, **off)
