"""Layer targeting by rules: an exact name, `re:<regex>` (full match) or `type:<TypeName>`."""

from __future__ import annotations

import re
from collections.abc import Iterable


def rule_matches(rule: str, names: Iterable[str], type_name: str) -> bool:
    """Whether `rule` picks a layer known by `names` (module path, node name) and `type_name`."""
    if rule.startswith("type:"):
        return type_name == rule[5:]
    names = list(names)
    if rule.startswith("re:"):
        pattern = re.compile(rule[3:])
        return any(pattern.fullmatch(n) or pattern.fullmatch(n.lstrip("/")) for n in names)
    return rule in names


def check_rule(rule: str) -> str:
    """A rule as a recipe gives it: a `re:` rule must compile (pydantic validators call this)."""
    if rule.startswith("re:"):
        try:
            re.compile(rule[3:])
        except re.error as exc:
            raise ValueError(f"'{rule}' is not a valid regular expression: {exc}") from None
    return rule
