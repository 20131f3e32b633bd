"""Text normalization for string (and token ``:text``) search.

http://hl7.org/fhir/R4/search.html#string: "By default, a field matches a
string query if the value of the field equals or starts with the supplied
parameter value, after both have been normalized by case and accent".

:func:`normalize_text` is applied to the indexed value *and* to the search
value, so whatever it folds, it folds on both sides:

1. NFKD decomposition and ``str.casefold`` (full Unicode case folding: ``ß`` ->
   ``ss``, ``Σ``/``ς`` -> ``σ``, ``Иванов`` -> ``иванов``; ``ﬁ`` -> ``fi``,
   full-width letters -> ASCII);
2. every combining mark is dropped (``é`` -> ``e``);
3. a few Latin letters that have no decomposition but are commonly typed
   without their stroke are folded too (``ø`` -> ``o``, ``ł`` -> ``l``,
   ``đ`` -> ``d``, ``ħ`` -> ``h``, ``ı`` -> ``i``, ``æ`` -> ``ae``, ``œ`` -> ``oe``);
4. runs of whitespace become one space, leading/trailing whitespace goes;
5. the result is cut to :data:`MAX_LENGTH` characters (the index column's size).

Cyrillic, as NFKD defines it: ``Ё``/``ё`` decompose to ``Е``/``е`` + U+0308,
so ``ё`` and ``е`` are the same letter for search (the usual Russian practice,
where ``ё`` is often written ``е``). ``Й``/``й`` decompose to ``И``/``и`` +
U+0306, so ``Йорк`` is indexed as ``иорк`` and a search for ``Иорк`` finds it.
We keep that rather than special-casing ``й``: it follows the one documented
rule (NFKD minus combining marks) and the index column's definition, it never
loses a match for the correctly spelled name (both sides fold the same way),
and the cost is an occasional extra match (``Иорк``) — a search may return
more than asked for, never less.
"""

from __future__ import annotations

import re
import unicodedata

#: The length of the index columns that hold normalized text (search_string.normalized, search_token.text).
MAX_LENGTH = 512

#: Letters NFKD leaves alone (no canonical decomposition), folded like accents.
_EXTRA_FOLDS = str.maketrans(
    {"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ı": "i", "ŧ": "t", "ƀ": "b", "æ": "ae", "œ": "oe"}
)
_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Case-folded, accent-free, whitespace-collapsed ``text``, at most 512 characters."""
    if text.isascii():
        # Fast path (most values): casefold of ASCII is lower(); nothing to decompose.
        folded = text.lower()
    else:
        # Case folding can compose (and compatibility decomposition can
        # produce capitals, e.g. ``℃`` -> ``°C``), so decompose, fold, decompose.
        decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
        folded = "".join(c for c in decomposed if not unicodedata.combining(c))
        folded = folded.translate(_EXTRA_FOLDS)
    return _WHITESPACE.sub(" ", folded).strip()[:MAX_LENGTH]


def truncate(text: str, length: int = MAX_LENGTH) -> str:
    """``text`` cut to a column's length (values longer than the column cannot be stored)."""
    return text[:length]
