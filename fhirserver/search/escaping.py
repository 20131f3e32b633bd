"""Escaping in search values — http://hl7.org/fhir/R4/search.html#escaping

``\\,`` ``\\$`` ``\\|`` and ``\\\\`` stand for the literal characters; an
unescaped ``,`` separates OR-ed values, ``$`` separates composite parts and
``|`` separates system and code.
"""

from __future__ import annotations


def split(text: str, separator: str) -> list[str]:
    """Split on unescaped ``separator``, keeping escapes in the parts."""
    parts, current, index = [], [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """Remove search escapes: ``\\,`` -> ``,``, ``\\|`` -> ``|``, ``\\$`` -> ``$``, ``\\\\`` -> ``\\``."""
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in ",$|\\":
            out.append(text[index + 1])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)
