"""Rules about text that the API and the executors both apply: one definition each."""

from __future__ import annotations

# C0 controls, DEL and the C1 controls: never in a task_type, a header, a URL or a subject.
_CONTROL_RANGES = ((0x00, 0x1F), (0x7F, 0x9F))
_SURROGATES = (0xD800, 0xDFFF)  # lone surrogates: not text, and PostgreSQL cannot store them

# The same rule as a JSON Schema (ECMA-262) pattern, for the OpenAPI document.
NO_CONTROL_CHARACTERS_PATTERN = "^[^" + "".join(f"\\u{low:04x}-\\u{high:04x}" for low, high in _CONTROL_RANGES) + "]*$"


def has_control_characters(text: str) -> bool:
    """True if `text` holds a C0, DEL or C1 control character, or a lone surrogate."""
    return any(
        any(low <= code <= high for low, high in _CONTROL_RANGES) or _SURROGATES[0] <= code <= _SURROGATES[1]
        for code in map(ord, text)
    )
