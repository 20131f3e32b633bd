"""SearchParameter FHIRPath expressions compiled to Python closures over resource JSON.

http://hl7.org/fhir/R4/search.html: each SearchParameter says with a FHIRPath
expression (http://hl7.org/fhirpath/N1/) which values of a resource it indexes.
A general FHIRPath engine evaluates them ~30x slower than needed on the write
path, so this module compiles the subset the R4 definitions use into closures
over the resource's JSON dict, typed at every step by the fhir.resources R4B
model metadata (:func:`fhirserver.resources.validate.elements`).

Supported (everything the R4 ``search-parameters.json`` uses, plus a little):

- paths ``Patient.name.given``, with a leading resource type (``Resource`` and
  ``DomainResource`` match any resource) or relative to the resource
  (``name | alias``); choice elements (``Observation.value`` yields
  ``valueQuantity``, ``valueString``, ... with their concrete types); arrays
  flatten; ``%resource`` / ``%rootResource``, ``$this``;
- ``|`` (union, duplicates removed), parentheses, ``[n]``;
- ``as T``, ``is T``, ``.as(T)``, ``.is(T)``, ``.ofType(T)`` (T or a subtype:
  ``as Quantity`` takes ``Age``; type names are case-sensitive, so the System
  type ``DateTime`` is not the FHIR ``dateTime``);
- ``.where(criteria)``, with fast paths for ``resolve() is T`` and
  ``field = 'literal'``; ``resolve()`` finds the type a Reference points to
  from its text (``T/id``, ``http://base/T/id``, ``T/id/_history/n``,
  ``#contained``), else from ``Reference.type``;
- ``exists()``, ``exists(criteria)``, ``empty()``, ``not()``, ``first()``,
  ``last()``, ``count()``, ``extension('url')``;
- ``=``, ``!=``, ``and``, ``or``, ``xor``, ``implies`` with string, number and
  boolean literals.

Anything else raises :class:`ExpressionError` at compile time (callers may
fall back to a general engine; no R4 definition needs to). Elements and types
the R4B models lack (the R4 definitions name a few R4B dropped) compile to
nothing and are listed by :func:`unknown_elements`; ``strict=True`` makes them
an :class:`UnknownElementError` instead. :func:`result_types` tells what an
expression can yield (for a composite: the context types of its components).

The compiled functions never raise on resource content: values of the wrong
JSON shape are skipped, primitives that only have an extension
(``_birthDate``) yield nothing.

Speed: an expression is compiled once per resource type it applies to (the
other branches of its unions drop out), each step knows the type of its input
so it reads one JSON key without dispatch (``value as Quantity`` reads
``valueQuantity`` alone), and values travel as (value, type) tuples until the
result is made into :class:`Node` objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from fhir.resources.R4B import fhirtypes, get_fhir_model_class

from fhirserver import conformance
from fhirserver.resources.validate import elements, resource_model

__all__ = [
    "ExpressionError",
    "Node",
    "compile_expression",
    "compile_relative",
    "UnknownElementError",
    "result_types",
    "unknown_elements",
]


@dataclass(frozen=True, slots=True)
class Node:
    """One value an expression yields."""

    value: Any  # the JSON value: a dict for complex types, str/bool/int/Decimal for primitives
    type: str  # its FHIR type code (``HumanName``, ``dateTime``, ``ObservationComponent``, ...)


class ExpressionError(ValueError):
    """A FHIRPath expression this module cannot compile."""


class UnknownElementError(ExpressionError):
    """A path names an element (or type) the R4B models do not have."""


# Inside, a value is a plain (value, type) tuple: a frozen dataclass costs ~10x
# a tuple to make. Only results become Nodes; setting the slots directly is
# ~2x faster than the frozen dataclass __init__.
_Item = tuple[Any, str]
_new_node = object.__new__
_set_value = Node.__dict__["value"].__set__  # the slots' member descriptors
_set_type = Node.__dict__["type"].__set__


def _node(value: Any, type_: str) -> Node:
    n = _new_node(Node)
    _set_value(n, value)
    _set_type(n, type_)
    return n


def _nodes(items: list[_Item]) -> list[Node]:
    out = []
    for value, type_ in items:  # _node() inlined: this runs for every result
        n = _new_node(Node)
        _set_value(n, value)
        _set_type(n, type_)
        out.append(n)
    return out


# Evaluation: fn(focus items, root resource dict or None) -> items.
_Eval = Callable[[list[_Item], Any], list[_Item]]
# A compiled part: its evaluation and the FHIR types it can yield.
_Step = tuple[_Eval, frozenset[str]]

# --------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------

_PRIMITIVES = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal",
        "id", "instant", "integer", "integer64", "markdown", "oid", "positiveInt",
        "string", "time", "unsignedInt", "uri", "url", "uuid", "xhtml",
    }
)  # fmt: skip

# FHIR type specializations (R4 StructureDefinition.baseDefinition), for is/as/ofType:
# ``as Quantity`` takes an Age. Primitive specializations (code of string,
# canonical of uri, ...) are left out on purpose: the R4 definitions tell them
# apart (``ConceptMap.source as uri`` vs ``as canonical``), as fhirpath.js does.
_PARENT = {
    "Age": "Quantity",
    "Count": "Quantity",
    "Distance": "Quantity",
    "Duration": "Quantity",
    "MoneyQuantity": "Quantity",
    "SimpleQuantity": "Quantity",
}
_SUPERTYPES = frozenset(_PARENT.values())
# FHIRPath System types: valid in type specifiers, never the type of a FHIR value.
_SYSTEM_TYPES = frozenset(
    {"Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity"}
)
# Resources that are not DomainResources.
_NOT_DOMAIN = frozenset({"Bundle", "Binary", "Parameters"})

_RESOURCE = "Resource"  # ElementInfo.type of contained, Bundle.entry.resource, ...
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@cache
def _r4_resource_types() -> frozenset[str]:
    return frozenset(conformance.load("r4-resource-types.json")["resourceTypes"])


@cache
def _resource_types() -> frozenset[str]:
    """Resource types the R4B models know (what a stored resource can be)."""
    # Asked of fhir.resources' type table (cheap), not by importing every model (~15 s).
    return frozenset(t for t in _r4_resource_types() if hasattr(fhirtypes, f"{t}Type"))


@cache
def _model_of(type_name: str) -> Any:
    """The R4B model class of a complex type, backbone element or resource, or None."""
    if type_name in _PRIMITIVES:
        return None
    if type_name in (_RESOURCE, "DomainResource"):
        return get_fhir_model_class(type_name)
    if type_name in _r4_resource_types():
        return resource_model(type_name)
    try:
        model = get_fhir_model_class(type_name)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    # get_fhir_model_class is lenient about names; make sure it is this type.
    return model if getattr(model, "__name__", None) == type_name else None


def _is_a(type_name: str, target: str) -> bool:
    """Is a value of FHIR type ``type_name`` of type ``target`` (or a specialization of it)?"""
    if type_name == target:
        return True
    if target == _RESOURCE:
        return type_name in _r4_resource_types()
    if target == "DomainResource":
        return type_name in _r4_resource_types() and type_name not in _NOT_DOMAIN
    parent = _PARENT.get(type_name)
    while parent is not None:
        if parent == target:
            return True
        parent = _PARENT.get(parent)
    return False


def _check_type_name(name: str, expression: str) -> str:
    """The type of a type specifier (``Quantity``, ``FHIR.Quantity``, ``System.DateTime``)."""
    namespace, _, local = name.rpartition(".")
    if namespace == "System":
        if local not in _SYSTEM_TYPES:
            raise ExpressionError(f"{expression!r}: unknown System type {name!r}")
        return "System." + local
    if namespace not in ("", "FHIR"):
        raise ExpressionError(f"{expression!r}: unknown type namespace in {name!r}")
    if (
        local in _PRIMITIVES
        or local in _PARENT
        or local in ("Element", "BackboneElement", _RESOURCE, "DomainResource")
        or local in _r4_resource_types()
        or _model_of(local) is not None
    ):
        return local
    if namespace == "" and local in _SYSTEM_TYPES:
        return "System." + local
    raise ExpressionError(f"{expression!r}: unknown type {name!r}")


@cache
def _type_filter(target: str) -> Callable[[str], bool]:
    if target.startswith("System."):
        return lambda t: False  # FHIR values are FHIR types (FHIRPath: case-sensitive names)
    if target == "Element":
        return lambda t: t not in _r4_resource_types()
    if target == "BackboneElement":
        return lambda t: t not in _PRIMITIVES and t not in _r4_resource_types()
    if target not in _SUPERTYPES and target not in _ABSTRACT:
        return target.__eq__  # no subtypes: a plain comparison
    return cache(lambda t: _is_a(t, target))


def _narrow(types: frozenset[str], target: str) -> frozenset[str]:
    """The static types of ``types`` filtered to ``target``."""
    keep = _type_filter(target)
    out = {t for t in types if keep(t)}
    if target in _resource_types() and (_RESOURCE in types or "DomainResource" in types):
        out.add(target)
    return frozenset(out)


# --------------------------------------------------------------------------
# Primitive value checks: what fits a primitive of each type in JSON
# --------------------------------------------------------------------------


def _is_bool(v: Any) -> bool:
    return v is True or v is False


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    t = type(v)
    if t is Decimal:
        return v.is_finite()
    if t is float:
        return v == v and v not in (float("inf"), float("-inf"))
    return t is int


def _is_text(v: Any) -> bool:
    return type(v) is str and v != ""


def _is_object(v: Any) -> bool:
    return type(v) is dict


_FITS: dict[str, Callable[[Any], bool]] = {
    "boolean": _is_bool,
    "integer": _is_int,
    "integer64": _is_int,
    "positiveInt": _is_int,
    "unsignedInt": _is_int,
    "decimal": _is_number,
}


def _fits(type_name: str, primitive: bool) -> Callable[[Any], bool]:
    if not primitive:
        return _is_object
    return _FITS.get(type_name, _is_text)


# --------------------------------------------------------------------------
# Members: how ``.name`` reads one type
# --------------------------------------------------------------------------

# One way to read a member: (JSON key, output type or None for a resource, fits).
_Variant = tuple[str, str | None, Callable[[Any], bool]]


@cache
def _member_variants(type_name: str, name: str) -> tuple[_Variant, ...] | None:
    """How member ``name`` of a value of ``type_name`` is read, or None if it has none."""
    model = _model_of(type_name)
    if model is None:
        return None
    table = elements(model)
    info = table.get(name)
    if info is not None and info.choice is None:
        infos = [info]
    else:
        infos = [i for i in table.values() if i.choice == name]
        if not infos:
            return None
    out: list[_Variant] = []
    for i in infos:
        if i.type == _RESOURCE:
            out.append((i.name, None, _is_object))
        else:
            out.append((i.name, i.type, _fits(i.type, i.primitive)))
    return tuple(out)


def _variant_types(variants: Iterable[_Variant]) -> set[str]:
    return {t if t is not None else _RESOURCE for _, t, _ in variants}


def _resource_item(v: Any) -> _Item | None:
    t = v.get("resourceType") if type(v) is dict else None
    if type(t) is str and t in _r4_resource_types():
        return (v, t)
    return None


def _read_variants(d: dict, variants: tuple[_Variant, ...], out: list[_Item]) -> None:
    """Append the values of ``variants`` in the JSON object ``d`` to ``out``."""
    for key, out_type, fits in variants:
        v = d.get(key)
        if v is None:
            continue
        for x in v if type(v) is list else (v,):
            if fits(x):
                if out_type is None:
                    r = _resource_item(x)
                    if r is not None:
                        out.append(r)
                else:
                    out.append((x, out_type))


def _reader(variants: tuple[_Variant, ...]) -> _Eval:
    """A member step for nodes of one known type: no dispatch, the common cases inlined."""
    if len(variants) != 1 or variants[0][1] is None:

        def read_any(nodes: list[_Item], root: Any) -> list[_Item]:
            out: list[_Item] = []
            for n in nodes:
                d = n[0]
                if type(d) is dict:
                    _read_variants(d, variants, out)
            return out

        return read_any
    key, out_type, fits = variants[0]
    assert out_type is not None
    if fits is _is_object:

        def read_complex(nodes: list[_Item], root: Any) -> list[_Item]:
            out: list[_Item] = []
            for n in nodes:
                d = n[0]
                if type(d) is not dict:
                    continue
                v = d.get(key)
                if v is None:
                    continue
                if type(v) is list:
                    for x in v:
                        if type(x) is dict:
                            out.append((x, out_type))
                elif type(v) is dict:
                    out.append((v, out_type))
            return out

        return read_complex

    def read_primitive(nodes: list[_Item], root: Any) -> list[_Item]:
        out: list[_Item] = []
        for n in nodes:
            d = n[0]
            if type(d) is not dict:
                continue
            v = d.get(key)
            if v is None:
                continue
            if type(v) is list:
                for x in v:
                    if fits(x):
                        out.append((x, out_type))
            elif fits(v):
                out.append((v, out_type))
        return out

    return read_primitive


_ABSTRACT = (_RESOURCE, "DomainResource")


def _member(
    name: str,
    in_types: frozenset[str],
    expression: str,
    only: Callable[[str], bool] | None = None,
) -> _Step:
    """The step ``.name`` on values of the static types ``in_types``.

    ``only`` keeps the variants of a choice element whose type passes (``value
    as Quantity`` reads ``valueQuantity`` alone). Raises UnknownElementError if
    no type in ``in_types`` has the element; an empty result type set means the
    element exists but ``only`` left nothing.
    """

    def variants_of(type_name: str) -> tuple[_Variant, ...] | None:
        found = _member_variants(type_name, name)
        if found is not None and only is not None:
            found = tuple(v for v in found if only(v[1] if v[1] is not None else _RESOURCE))
        return found

    handlers: dict[str, tuple[_Variant, ...] | None] = {}
    out_types: set[str] = set()
    known = dynamic = False
    for t in in_types:
        if t in _PRIMITIVES:
            continue
        variants = variants_of(t)
        if variants is None and t in _ABSTRACT:
            dynamic = True  # a member of some concrete resource type: resolved per value
            continue
        if variants is not None:
            known = True
            out_types |= _variant_types(variants)
        handlers[t] = variants
    if not known and not dynamic and in_types:
        where = " | ".join(sorted(in_types)[:5]) + (" | ..." if len(in_types) > 5 else "")
        raise UnknownElementError(f"{expression!r}: {where} has no element {name!r}")
    if dynamic:
        out_types.add(_RESOURCE)  # unknown until run time
    elif not out_types:
        return _nothing, frozenset()

    # Values of one concrete static type are of exactly that type at run time
    # (see compile_relative), so they need no dispatch.
    if len(handlers) == 1 and not dynamic:
        ((only_type, variants),) = handlers.items()
        if only_type not in _ABSTRACT:
            return (_reader(variants) if variants else _nothing), frozenset(out_types)

    def lookup(type_name: str) -> tuple[_Variant, ...] | None:
        # A type the compiler did not see (a concrete resource under
        # ``Resource``): resolved once, remembered.
        try:
            found = variants_of(type_name) if type(type_name) is str else None
        except Exception:  # noqa: BLE001 - never fail on content
            found = None
        if len(handlers) < 1000:
            handlers[type_name] = found
        return found

    get = handlers.get
    missing: Any = lookup  # a sentinel no handler is

    def member(nodes: list[_Item], root: Any) -> list[_Item]:
        out: list[_Item] = []
        for n in nodes:
            variants = get(n[1], missing)
            if variants is missing:
                variants = lookup(n[1])
            if variants and type(n[0]) is dict:
                _read_variants(n[0], variants, out)
        return out

    return member, frozenset(out_types)


def _this(nodes: list[_Item], root: Any) -> list[_Item]:
    return nodes


def _nothing(nodes: list[_Item], root: Any) -> list[_Item]:
    return []


# --------------------------------------------------------------------------
# resolve(): the type a reference points to
# --------------------------------------------------------------------------


def _parse_reference(ref: str) -> tuple[str, str] | None:
    """(type, id) of a literal reference ``T/id``, ``http://base/T/id``, ``T/id/_history/n``."""
    if "?" in ref:
        return None  # a conditional reference names no resource
    parts = ref.split("|", 1)[0].split("/")  # ``|version`` of a canonical
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    rtype, rid = parts[-2], parts[-1]
    if rtype in _r4_resource_types() and _ID.fullmatch(rid):
        return rtype, rid
    return None


# Reference text -> the type it names. Servers see the same references over and
# over (every Observation of a patient); bounded, and cleared when full.
_REFERENCE_TYPES: dict[str, str | None] = {}
_REFERENCE_CACHE_SIZE = 50_000


def _literal_type(ref: str) -> str | None:
    found = _REFERENCE_TYPES.get(ref, _REFERENCE_TYPES)
    if found is _REFERENCE_TYPES:
        parsed = _parse_reference(ref)
        found = parsed[0] if parsed is not None else None
        if len(_REFERENCE_TYPES) >= _REFERENCE_CACHE_SIZE:
            _REFERENCE_TYPES.clear()
        _REFERENCE_TYPES[ref] = found
    return found  # type: ignore[return-value]


def _contained(root: Any, ref: str) -> _Item | None:
    """The resource a local reference (``#id``, ``#`` for the container) points to."""
    if type(root) is not dict:
        return None
    if ref == "#":
        return _resource_item(root)
    contained = root.get("contained")
    if type(contained) is list:
        for c in contained:
            if type(c) is dict and c.get("id") == ref[1:]:
                return _resource_item(c)
    return None


def _reference_type(value: Any, root: Any) -> str | None:
    """The resource type a Reference (or canonical) points to, or None if it cannot tell.

    From the reference text: relative ``T/id``, absolute ``http://base/T/id``,
    versioned ``T/id/_history/n``, local ``#id`` (the type of that contained
    resource). A reference without text (or with one that names no type, such
    as ``urn:uuid:...``) is taken at its ``Reference.type``.
    """
    if type(value) is dict:
        ref = value.get("reference")
        if type(ref) is str and ref:
            if ref[0] == "#":
                item = _contained(root, ref)
                return item[1] if item is not None else None
            found = _literal_type(ref)
            if found is not None:
                return found
        rtype = value.get("type")
        if type(rtype) is str and rtype in _r4_resource_types():
            return rtype
        return None
    if type(value) is str and value:
        return _literal_type(value)
    return None


def _resolve_one(value: Any, root: Any) -> _Item | None:
    """What resolve() yields for one value: the contained resource for ``#id``,
    else a stand-in ``{"resourceType": T}`` (this module reads no other resources)."""
    if type(value) is dict:
        ref = value.get("reference")
        if type(ref) is str and ref[:1] == "#":
            return _contained(root, ref)
    rtype = _reference_type(value, root)
    return ({"resourceType": rtype}, rtype) if rtype is not None else None


def _resolve(nodes: list[_Item], root: Any) -> list[_Item]:
    out = []
    for n in nodes:
        r = _resolve_one(n[0], root)
        if r is not None:
            out.append(r)
    return out


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
  | (?P<env>%[A-Za-z_][A-Za-z0-9_]*|%`[^`]+`)
  | (?P<special>\$this|\$index|\$total)
  | (?P<op>!=|<=|>=|!~|[|=()\[\].,<>~+\-*/&])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}  # fmt: skip


def _unescape(body: str) -> str:
    def repl(m: re.Match[str]) -> str:
        c = m.group(1)
        if c.startswith("u"):
            return chr(int(c[1:], 16))
        return _ESCAPES.get(c, c)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", repl, body)


def _tokenize(expression: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(expression):
        m = _TOKEN.match(expression, pos)
        if m is None:
            raise ExpressionError(
                f"{expression!r}: unexpected {expression[pos : pos + 10]!r} at {pos}"
            )
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            text = m.group()
            if kind == "ident" and text.startswith("`"):
                kind, text = "qident", text[1:-1]
            tokens.append((kind, text, pos))
        pos = m.end()
    tokens.append(("end", "", len(expression)))
    return tokens


class _Parser:
    """Recursive descent over the FHIRPath grammar, for the operators supported here.

    AST nodes are tuples: ("ident", name), ("member", base, name),
    ("func", base|None, name, args), ("index", base, n), ("union", l, r),
    ("as"|"is", base, type), ("=", l, r), ("!=", l, r), ("and"|"or"|"xor"|"implies", l, r),
    ("literal", value, type), ("env", name), ("this",).
    """

    # Operators by precedence, loosest first (FHIRPath §6 / grammar).
    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("implies",),
        ("or", "xor"),
        ("and",),
        ("in", "contains"),
        ("=", "!=", "~", "!~"),
        ("<", ">", "<=", ">="),
        ("|",),
        ("is", "as"),
    )
    _SUPPORTED = frozenset({"implies", "or", "xor", "and", "=", "!=", "|", "is", "as"})

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.i = 0

    def error(self, what: str) -> ExpressionError:
        pos = self.tokens[min(self.i, len(self.tokens) - 1)][2]
        return ExpressionError(f"{self.expression!r}: {what} at position {pos}")

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        if tok[0] != "end":  # the end token stays the last one read
            self.i += 1
        return tok

    def expect(self, text: str) -> None:
        if self.peek()[1] != text or self.peek()[0] not in ("op",):
            raise self.error(f"expected {text!r}")
        self.i += 1

    def parse(self) -> tuple:
        ast = self.level(0)
        if self.peek()[0] != "end":
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return ast

    def is_operator(self, level: int) -> str | None:
        kind, text, _ = self.peek()
        if text in self._LEVELS[level] and kind in ("op", "ident"):
            return text
        return None

    def level(self, level: int) -> tuple:
        if level == len(self._LEVELS):
            return self.postfix()
        left = self.level(level + 1)
        while (op := self.is_operator(level)) is not None:
            if op not in self._SUPPORTED:
                raise self.error(f"operator {op!r} is not supported")
            self.take()
            if op in ("is", "as"):
                left = (op, left, self.type_specifier())
            else:
                left = (op, left, self.level(level + 1))
        return left

    def type_specifier(self) -> str:
        kind, text, _ = self.take()
        if kind not in ("ident", "qident"):
            raise self.error("expected a type name")
        while self.peek()[1] == "." and self.tokens[self.i + 1][0] in ("ident", "qident"):
            self.take()
            text += "." + self.take()[1]
        return text

    def postfix(self) -> tuple:
        kind, text, _ = self.peek()
        if kind == "op" and text in ("-", "+"):
            raise self.error("arithmetic is not supported")
        node = self.term()
        while True:
            kind, text, _ = self.peek()
            if kind == "op" and text == ".":
                self.take()
                node = self.invocation(node)
            elif kind == "op" and text == "[":
                self.take()
                index = self.level(0)
                self.expect("]")
                if index[0] != "literal" or index[2] != "integer":
                    raise self.error("only integer literal indexes are supported")
                node = ("index", node, index[1])
            else:
                return node

    def term(self) -> tuple:
        kind, text, _ = self.peek()
        if kind == "op" and text == "(":
            self.take()
            inner = self.level(0)
            self.expect(")")
            return inner
        if kind == "string":
            self.take()
            return ("literal", _unescape(text[1:-1]), "string")
        if kind == "number":
            self.take()
            if "." in text:
                return ("literal", Decimal(text), "decimal")
            return ("literal", int(text), "integer")
        if kind == "ident" and text in ("true", "false"):
            self.take()
            return ("literal", text == "true", "boolean")
        if kind == "env":
            self.take()
            return ("env", text[1:].strip("`"))
        if kind == "special":
            self.take()
            if text != "$this":
                raise self.error(f"{text} is not supported")
            return ("this",)
        if kind in ("ident", "qident"):
            return self.invocation(None)
        raise self.error(f"unexpected {text!r}" if text else "unexpected end")

    def invocation(self, base: tuple | None) -> tuple:
        kind, text, _ = self.take()
        if kind not in ("ident", "qident"):
            raise self.error("expected a name")
        if kind == "ident" and self.peek()[1] == "(" and self.peek()[0] == "op":
            self.take()
            args: list[Any] = []
            if self.peek()[1] != ")":
                if text in ("as", "is", "ofType"):
                    args.append(self.type_specifier())
                else:
                    args.append(self.level(0))
                    while self.peek()[1] == ",":
                        self.take()
                        args.append(self.level(0))
            self.expect(")")
            return ("func", base, text, tuple(args))
        if base is None:
            return ("ident", text)
        return ("member", base, text)


@cache
def _parse(expression: str) -> tuple:
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError(f"{expression!r}: an empty expression")
    return _Parser(expression).parse()


# --------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------


def _boolean(nodes: list[_Item]) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a boolean (None = empty)."""
    if not nodes:
        return None
    if len(nodes) > 1:
        return None  # an error in FHIRPath; here: unknown
    v = nodes[0][0]
    if v is True or v is False:
        return v
    return True


def _equal_values(a: Any, b: Any) -> bool:
    if (a is True or a is False) != (b is True or b is False):
        return False  # true is not 1
    if type(a) is float or type(b) is float:
        try:
            a, b = Decimal(str(a)), Decimal(str(b))
        except InvalidOperation:
            return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - exotic content compares unequal
        return False


def _equal(left: list[_Item], right: list[_Item]) -> bool | None:
    if not left or not right:
        return None
    if len(left) != len(right):
        return False
    return all(_equal_values(a[0], b[0]) for a, b in zip(left, right, strict=True))


def _bool_result(value: bool | None) -> list[_Item]:
    return [] if value is None else [(value, "boolean")]


def _same(a: Any, b: Any) -> bool:
    """JSON equality that keeps what an index needs apart: true is not 1, 1.0 is not 1.00."""
    if a is b:
        return True
    ta = type(a)
    if ta is not type(b):
        return False
    if ta is dict:
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if ta is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if ta is Decimal:
        return str(a) == str(b)
    return bool(a == b)


def _key(value: Any) -> Any:
    """A hashable stand-in for a JSON value, equal exactly when :func:`_same` is."""
    t = type(value)
    if t is dict:
        return ("{", tuple(sorted((k, _key(v)) for k, v in value.items())))
    if t is list:
        return ("[", tuple(_key(v) for v in value))
    if t is Decimal:
        return ("D", str(value))
    return (t.__name__, value)


def _dedupe(nodes: list[_Item]) -> list[_Item]:
    """FHIRPath ``|`` removes duplicates (by value)."""
    out: list[_Item] = []
    if len(nodes) > 8:  # pairwise would be quadratic
        try:
            seen: set = set()
            for n in nodes:
                key = _key(n[0])
                if key not in seen:
                    seen.add(key)
                    out.append(n)
            return out
        except TypeError:  # not JSON after all: compare pairwise
            out = []
    for n in nodes:
        if not any(_same(m[0], n[0]) for m in out):
            out.append(n)
    return out


class _Compiler:
    def __init__(self, expression: str, strict: bool) -> None:
        self.expression = expression
        self.strict = strict
        self.unknown: list[str] = []  # what R4B lacks, compiled to nothing

    def lacking(self, problem: str) -> _Step:
        """A part of the expression R4B has no such thing for: an error when
        strict, else (the R4 definitions name a few elements and types that
        R4B dropped, which no stored resource can have) a branch of nothing."""
        if self.strict:
            raise UnknownElementError(f"{self.expression!r}: {problem}")
        self.unknown.append(problem)
        return _nothing, frozenset()

    def member(
        self, name: str, types: frozenset[str], only: Callable[[str], bool] | None = None
    ) -> _Step:
        try:
            return _member(name, types, self.expression, only)
        except UnknownElementError as exc:
            if self.strict:
                raise
            self.unknown.append(str(exc).split(": ", 1)[-1])
            return _nothing, frozenset()

    def error(self, what: str) -> ExpressionError:
        return ExpressionError(f"{self.expression!r}: {what}")

    # Each compile step: (ast, static input types) -> (eval, static output types).

    def compile(self, ast: tuple, types: frozenset[str]) -> _Step:
        method = getattr(self, "c_" + {"=": "eq", "!=": "ne", "|": "union"}.get(ast[0], ast[0]))
        return method(ast, types)

    def c_this(self, ast: tuple, types: frozenset[str]) -> _Step:
        return _this, types

    def c_literal(self, ast: tuple, types: frozenset[str]) -> _Step:
        result = [(ast[1], ast[2])]
        return (lambda nodes, root: result), frozenset({ast[2]})

    def c_env(self, ast: tuple, types: frozenset[str]) -> _Step:
        if ast[1] not in ("resource", "rootResource"):
            raise self.error(f"%{ast[1]} is not supported")

        def env(nodes: list[_Item], root: Any) -> list[_Item]:
            r = _resource_item(root)
            return [r] if r is not None else []

        return env, frozenset({_RESOURCE})

    def c_ident(self, ast: tuple, types: frozenset[str]) -> _Step:
        name = ast[1]
        # FHIRPath: a leading type name filters the context to that type.
        if name[:1].isupper():
            if name not in (_RESOURCE, "DomainResource") and name not in _r4_resource_types():
                raise self.error(f"unknown resource type {name!r}")
            if name not in _ABSTRACT and name not in _resource_types():
                # R4 types R4B dropped (EffectEvidenceSynthesis, ...): never stored.
                return self.lacking(f"R4B has no resource type {name}")
            keep = _type_filter(name)
            if name in _ABSTRACT:
                out_types = {t for t in types if keep(t)}
            else:
                out_types = {name} if name in types else set()
            if _RESOURCE in types or "DomainResource" in types:
                out_types.add(name)
            if not out_types:
                return _nothing, frozenset()
            if out_types == types:
                return _this, types  # e.g. ``Patient`` on a Patient: nothing to filter

            def type_filter(nodes: list[_Item], root: Any) -> list[_Item]:
                return [n for n in nodes if keep(n[1])]

            return type_filter, frozenset(out_types)
        return self.member(name, types)

    def c_member(self, ast: tuple, types: frozenset[str]) -> _Step:
        base, base_types = self.compile(ast[1], types)
        if not base_types:
            return _nothing, frozenset()
        step, out_types = self.member(ast[2], base_types)
        return self.then(base, step), out_types

    @staticmethod
    def then(base: _Eval, step: _Eval) -> _Eval:
        """``step`` applied to what ``base`` yields."""
        if step is _nothing or base is _nothing:
            return _nothing
        if base is _this:
            return step

        def member(nodes: list[_Item], root: Any) -> list[_Item]:
            focus = base(nodes, root)
            return step(focus, root) if focus else focus

        return member

    def c_index(self, ast: tuple, types: frozenset[str]) -> _Step:
        base, out_types = self.compile(ast[1], types)
        i = ast[2]

        def index(nodes: list[_Item], root: Any) -> list[_Item]:
            focus = base(nodes, root)
            return [focus[i]] if 0 <= i < len(focus) else []

        return index, out_types

    def c_union(self, ast: tuple, types: frozenset[str]) -> _Step:
        # ``a | b | c`` is one union of three branches (duplicates removed once).
        branches: list[tuple] = []
        pending = [ast]
        while pending:
            part = pending.pop()
            if part[0] == "|":
                pending += [part[2], part[1]]
            else:
                branches.append(part)
        compiled = [self.compile(branch, types) for branch in branches]
        out_types = frozenset().union(*(t for _, t in compiled))
        parts = tuple(fn for fn, _ in compiled if fn is not _nothing)
        if not parts:
            return _nothing, frozenset()
        if len(parts) == 1:
            (one,) = parts

            def union_one(nodes: list[_Item], root: Any) -> list[_Item]:
                found = one(nodes, root)
                return _dedupe(found) if len(found) > 1 else found

            return union_one, out_types

        def union(nodes: list[_Item], root: Any) -> list[_Item]:
            found: list[_Item] = []
            for part in parts:
                found += part(nodes, root)
            return _dedupe(found) if len(found) > 1 else found

        return union, out_types

    def _cast(self, base_ast: tuple | None, types: frozenset[str], type_name: str) -> _Step:
        """``base as T`` / ``base.ofType(T)``: the values of ``base`` of type T (or a subtype)."""
        target = _check_type_name(type_name, self.expression)
        keep = _type_filter(target)
        if base_ast is not None and (
            base_ast[0] == "member" or (base_ast[0] == "ident" and not base_ast[1][:1].isupper())
        ):
            # ``value as Quantity`` reads valueQuantity alone, not every value[x].
            if base_ast[0] == "member":
                parent, parent_types = self.compile(base_ast[1], types)
                name = base_ast[2]
            else:
                parent, parent_types, name = _this, types, base_ast[1]
            if not parent_types:
                return _nothing, frozenset()
            all_step, all_types = self.member(name, parent_types)
            if not all_types:
                return _nothing, frozenset()
            if _RESOURCE not in all_types:  # a resource's type is only known at run time
                step, out_types = self.member(name, parent_types, keep)
                if not out_types:
                    shown = " | ".join(sorted(all_types)[:5])
                    return self.lacking(f"{shown} is never a {target}")
                return self.then(parent, step), out_types
            base, base_types = self.then(parent, all_step), all_types
        elif base_ast is None:
            base, base_types = _this, types
        else:
            base, base_types = self.compile(base_ast, types)
        if not base_types:
            return _nothing, frozenset()
        out_types = _narrow(base_types, target)
        if not out_types:
            shown = " | ".join(sorted(base_types)[:5])
            return self.lacking(f"{shown} is never a {target}")

        def cast(nodes: list[_Item], root: Any) -> list[_Item]:
            return [n for n in base(nodes, root) if keep(n[1])]

        return cast, out_types

    def c_as(self, ast: tuple, types: frozenset[str]) -> _Step:
        # FHIRPath wants a single item before ``as``; the R4 definitions use it
        # on repeating elements (R5 rewrote them to ofType), so it filters.
        return self._cast(ast[1], types, ast[2])

    def c_is(self, ast: tuple, types: frozenset[str]) -> _Step:
        base, _ = self.compile(ast[1], types)
        keep = _type_filter(_check_type_name(ast[2], self.expression))

        def is_(nodes: list[_Item], root: Any) -> list[_Item]:
            focus = base(nodes, root)
            if len(focus) != 1:
                return []
            return [(keep(focus[0][1]), "boolean")]

        return is_, frozenset({"boolean"})

    def _binary(self, ast: tuple, types: frozenset[str]) -> tuple[_Eval, _Eval]:
        return self.compile(ast[1], types)[0], self.compile(ast[2], types)[0]

    def c_eq(self, ast: tuple, types: frozenset[str]) -> _Step:
        left, right = self._binary(ast, types)
        return (lambda n, r: _bool_result(_equal(left(n, r), right(n, r)))), frozenset({"boolean"})

    def c_ne(self, ast: tuple, types: frozenset[str]) -> _Step:
        left, right = self._binary(ast, types)

        def ne(nodes: list[_Item], root: Any) -> list[_Item]:
            eq = _equal(left(nodes, root), right(nodes, root))
            return _bool_result(None if eq is None else not eq)

        return ne, frozenset({"boolean"})

    def c_and(self, ast: tuple, types: frozenset[str]) -> _Step:
        left, right = self._binary(ast, types)

        def and_(nodes: list[_Item], root: Any) -> list[_Item]:
            a = _boolean(left(nodes, root))
            if a is False:
                return _bool_result(False)
            b = _boolean(right(nodes, root))
            if b is False:
                return _bool_result(False)
            return _bool_result(True if a and b else None)

        return and_, frozenset({"boolean"})

    def c_or(self, ast: tuple, types: frozenset[str]) -> _Step:
        left, right = self._binary(ast, types)

        def or_(nodes: list[_Item], root: Any) -> list[_Item]:
            a = _boolean(left(nodes, root))
            if a is True:
                return _bool_result(True)
            b = _boolean(right(nodes, root))
            if b is True:
                return _bool_result(True)
            return _bool_result(False if a is False and b is False else None)

        return or_, frozenset({"boolean"})

    def c_xor(self, ast: tuple, types: frozenset[str]) -> _Step:
        left, right = self._binary(ast, types)

        def xor(nodes: list[_Item], root: Any) -> list[_Item]:
            a, b = _boolean(left(nodes, root)), _boolean(right(nodes, root))
            return _bool_result(None if a is None or b is None else a != b)

        return xor, frozenset({"boolean"})

    def c_implies(self, ast: tuple, types: frozenset[str]) -> _Step:
        left, right = self._binary(ast, types)

        def implies(nodes: list[_Item], root: Any) -> list[_Item]:
            a = _boolean(left(nodes, root))
            if a is False:
                return _bool_result(True)
            b = _boolean(right(nodes, root))
            if b is True:
                return _bool_result(True)
            return _bool_result(False if a is True and b is False else None)

        return implies, frozenset({"boolean"})

    # -- functions ---------------------------------------------------------

    def c_func(self, ast: tuple, types: frozenset[str]) -> _Step:
        _, base_ast, name, args = ast
        if name in ("as", "ofType"):
            self.arity(name, args, 1)
            return self._cast(base_ast, types, args[0])
        # A function without a base (``resolve()`` in ``where(resolve() is T)``) runs on the focus.
        base, base_types = (_this, types) if base_ast is None else self.compile(base_ast, types)
        method = getattr(self, "f_" + name, None)
        if method is None:
            raise self.error(f"function {name}() is not supported")
        return method(base, base_types, args)

    def arity(self, name: str, args: tuple, *counts: int) -> None:
        if len(args) not in counts:
            raise self.error(f"{name}() takes {' or '.join(map(str, counts))} argument(s)")

    def f_is(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("is", args, 1)
        keep = _type_filter(_check_type_name(args[0], self.expression))

        def is_(nodes: list[_Item], root: Any) -> list[_Item]:
            focus = base(nodes, root)
            return [(keep(focus[0][1]), "boolean")] if len(focus) == 1 else []

        return is_, frozenset({"boolean"})

    def f_resolve(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("resolve", args, 0)
        return (lambda nodes, root: _resolve(base(nodes, root), root)), frozenset({_RESOURCE})

    def f_where(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("where", args, 1)
        test = self.predicate(args[0], types)

        def where(nodes: list[_Item], root: Any) -> list[_Item]:
            return [n for n in base(nodes, root) if test(n, root)]

        return where, types

    def predicate(self, ast: tuple, types: frozenset[str]) -> Callable[[_Item, Any], bool]:
        """A where() criteria as a test of one node, with fast paths for the R4 forms."""
        # resolve() is T
        if ast[0] == "is" and ast[1] == ("func", None, "resolve", ()):
            keep = _type_filter(_check_type_name(ast[2], self.expression))

            def resolves_to(n: _Item, root: Any) -> bool:
                rtype = _reference_type(n[0], root)
                return rtype is not None and keep(rtype)

            return resolves_to
        # field = 'literal'
        if ast[0] == "=" and ast[1][0] == "ident" and ast[2][0] == "literal":
            step, _ = self.member(ast[1][1], types)
            literal = ast[2][1]

            def field_equals(n: _Item, root: Any) -> bool:
                found = step([n], root)
                return len(found) == 1 and _equal_values(found[0][0], literal)

            return field_equals
        criteria, _ = self.compile(ast, types)
        return lambda n, root: _boolean(criteria([n], root)) is True

    def f_exists(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("exists", args, 0, 1)
        if args:
            test = self.predicate(args[0], types)
            return (
                lambda nodes, root: [(any(test(n, root) for n in base(nodes, root)), "boolean")]
            ), frozenset({"boolean"})
        return (lambda nodes, root: [(bool(base(nodes, root)), "boolean")]), frozenset({"boolean"})

    def f_empty(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("empty", args, 0)
        return (lambda nodes, root: [(not base(nodes, root), "boolean")]), frozenset({"boolean"})

    def f_not(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("not", args, 0)

        def not_(nodes: list[_Item], root: Any) -> list[_Item]:
            b = _boolean(base(nodes, root))
            return _bool_result(None if b is None else not b)

        return not_, frozenset({"boolean"})

    def f_first(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("first", args, 0)
        return (lambda nodes, root: base(nodes, root)[:1]), types

    def f_last(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("last", args, 0)
        return (lambda nodes, root: base(nodes, root)[-1:]), types

    def f_count(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("count", args, 0)
        return (lambda nodes, root: [(len(base(nodes, root)), "integer")]), frozenset({"integer"})

    def f_extension(self, base: _Eval, types: frozenset[str], args: tuple) -> _Step:
        self.arity("extension", args, 1)
        if args[0][0] != "literal" or args[0][2] != "string":
            raise self.error("extension() takes a string literal url")
        if any(t in _PRIMITIVES for t in types):
            raise self.error("extensions of primitive values are not supported")
        step, out_types = self.member("extension", types)
        url = args[0][1]

        def extension(nodes: list[_Item], root: Any) -> list[_Item]:
            return [n for n in step(base(nodes, root), root) if n[0].get("url") == url]

        return extension, out_types


_Compiled = tuple[_Eval, frozenset[str], tuple[str, ...]]  # eval, static result types, unknowns


@cache
def _compile_root(expression: str, strict: bool) -> _Compiled:
    compiler = _Compiler(expression, strict)
    compiled, types = compiler.compile(_parse(expression), _resource_types())
    return compiled, types, tuple(compiler.unknown)


def _leading_types(ast: tuple) -> frozenset[str] | None:
    """The resource types an expression can yield anything for (None: any type)."""
    kind = ast[0]
    if kind == "ident":
        name = ast[1]
        return frozenset({name}) if name[:1].isupper() and name not in _ABSTRACT else None
    if kind in ("member", "index", "as", "is"):
        return _leading_types(ast[1])
    if kind == "func":
        return None if ast[1] is None else _leading_types(ast[1])
    if kind == "literal":
        return frozenset()
    if kind in ("env", "this"):
        return None
    left, right = _leading_types(ast[1]), _leading_types(ast[2])
    return None if left is None or right is None else left | right


@cache
def _compile_by_type(expression: str) -> dict[str, _Eval]:
    """The expression compiled once per resource type it can yield anything for:
    the other branches of its unions and the type tests drop out."""
    ast = _parse(expression)
    leading = _leading_types(ast)
    candidates = _resource_types() if leading is None else leading & _resource_types()
    by_type: dict[str, _Eval] = {}
    for rtype in sorted(candidates):
        compiled, _ = _Compiler(expression, strict=False).compile(ast, frozenset({rtype}))
        if compiled is not _nothing:
            by_type[rtype] = compiled
    return by_type


@cache
def _compile_context(expression: str, context_type: str, strict: bool) -> _Compiled:
    if not isinstance(context_type, str) or (
        context_type not in _PRIMITIVES
        and context_type not in (_RESOURCE, "DomainResource")
        and _model_of(context_type) is None
    ):
        raise ExpressionError(f"{expression!r}: unknown context type {context_type!r}")
    compiler = _Compiler(expression, strict)
    compiled, types = compiler.compile(_parse(expression), frozenset({context_type}))
    return compiled, types, tuple(compiler.unknown)


@cache
def compile_expression(expression: str, *, strict: bool = False) -> Callable[[dict], list[Node]]:
    """Compile a whole SearchParameter.expression into ``fn(resource) -> [Node]``.

    Branches whose leading type is not the resource's ``resourceType`` yield
    nothing; a branch without a leading type (``name | alias``) reads the
    resource itself. Raises :class:`ExpressionError` for what it cannot compile.

    The R4 definitions name a few things the R4B models (and so stored
    resources) do not have: resource types (``EffectEvidenceSynthesis``),
    elements (``Evidence.topic``), types of choice elements, the System type
    ``DateTime`` where ``dateTime`` was meant. Those parts yield nothing and
    :func:`unknown_elements` lists them; with ``strict=True`` they raise
    :class:`UnknownElementError` instead (for custom SearchParameters).
    """
    _compile_root(expression, strict)  # checks the whole expression, raises if it must
    by_type = _compile_by_type(expression)
    get = by_type.get

    def evaluate(resource: dict) -> list[Node]:
        if type(resource) is not dict:
            return []
        rtype = resource.get("resourceType")
        if type(rtype) is not str:
            return []
        compiled = get(rtype)
        if compiled is None:
            return []
        try:
            return _nodes(compiled([(resource, rtype)], resource))
        except Exception:  # noqa: BLE001 - never fail on content
            return []

    evaluate.__doc__ = f"FHIRPath {expression!r} compiled by fhirserver.search.expressions."
    return evaluate


@cache
def compile_relative(
    expression: str, context_type: str, *, strict: bool = False
) -> Callable[..., list[Node]]:
    """Compile a composite component expression relative to a node of ``context_type``.

    ``context_type`` is a resource type, a backbone element's model class name
    (``ObservationComponent``, as the parent expression's nodes report it) or
    a datatype. The result is ``fn(node, resource=None) -> [Node]``;
    ``resource`` (the resource being indexed) is what ``%resource`` and
    ``#contained`` references refer to. A node of another type than
    ``context_type`` (``Observation | Observation.component`` yields two) is
    read with its own type's elements. ``strict`` as for :func:`compile_expression`.
    """
    compiled = _compile_context(expression, context_type, strict)[0]

    def evaluate(node: Node, resource: dict | None = None) -> list[Node]:
        if type(node) is not Node:
            return []
        try:
            item = (node.value, node.type)
            if node.type == context_type:
                return _nodes(compiled([item], resource))
            # The compiled steps rely on the static type being the node's type.
            return _nodes(_compile_context(expression, node.type, False)[0]([item], resource))
        except Exception:  # noqa: BLE001 - never fail on content (nor on an odd node.type)
            return []

    evaluate.__doc__ = (
        f"FHIRPath {expression!r} on a {context_type}, compiled by fhirserver.search.expressions."
    )
    return evaluate


def unknown_elements(expression: str, context_type: str | None = None) -> tuple[str, ...]:
    """What the R4B models lack among what ``expression`` names (compiled to nothing).

    Empty for an expression that is fully typed. Raises :class:`ExpressionError`
    like the compile functions.
    """
    if context_type is None:
        return _compile_root(expression, False)[2]
    return _compile_context(expression, context_type, False)[2]


def result_types(expression: str, context_type: str | None = None) -> frozenset[str]:
    """The FHIR types ``expression`` can yield, as far as the models tell at compile time.

    For a composite parameter these are the context types of its components
    (``Observation | Observation.component`` -> Observation, ObservationComponent).
    ``Resource`` stands for any resource type (``Bundle.entry[0].resource``).
    """
    if context_type is None:
        return _compile_root(expression, False)[1]
    return _compile_context(expression, context_type, False)[1]
