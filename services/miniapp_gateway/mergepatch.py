"""JSON Merge Patch (RFC 7396) as a pure function."""

from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """The result of applying `patch` to `target`; neither argument is modified."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_diff(source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that turns `source` into `target`: `merge_patch(source, merge_diff(source,
    target)) == target` for any two session states (objects whose members are never null, as every
    state made by merge patches is)."""
    patch: dict[str, Any] = {key: None for key in source if key not in target}
    for key, value in target.items():
        before = source.get(key)
        if key not in source:
            patch[key] = value
        elif isinstance(before, dict) and isinstance(value, dict):
            if before != value:
                patch[key] = merge_diff(before, value)
        elif before != value:
            patch[key] = value
    return patch
