"""The PATCH engine: JSON Patch and FHIRPath Patch applied to a resource's JSON.

http://hl7.org/fhir/R4/http.html#patch: a server may accept a JSON Patch
(RFC 6902, ``application/json-patch+json``) or a FHIRPath Patch (a Parameters
resource, http://hl7.org/fhir/R4/fhirpatch.html). Both are pure functions
here: they take the current resource and the patch document and return the
patched resource as a NEW dict. The input is never changed, also when an
operation fails half-way (the work is done on a deep copy). Validating the
result as FHIR is the caller's job (the PATCH interaction runs the R4B model).

Errors (``fhirserver.errors``), each naming the operation by its 0-based index:

- the patch document is malformed (not a list of operations / not a Parameters
  resource, an unknown operation, a missing part, a bad JSON Pointer, a bad
  FHIRPath): :class:`BadRequest` (400);
- the patch cannot be applied to this resource (a JSON Patch ``test`` fails, a
  path that must select something selects nothing, or several things where one
  is needed, a value of the wrong type) or it would change ``resourceType`` or
  ``id``: :class:`Unprocessable` (422).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import jsonpatch
from jsonpointer import JsonPointer, JsonPointerException

from fhirserver.errors import BadRequest, FhirError, Issue, Unprocessable
from fhirserver.resources import jsonio
from fhirserver.resources.validate import (
    MAX_DEPTH,
    ElementInfo,
    elements,
    json_kind,
    resource_model,
)

# --------------------------------------------------------------------------
# Shared
# --------------------------------------------------------------------------

_MISSING = object()


def _identity_check(original: dict, patched: object, fail: Callable[[str], FhirError]) -> None:
    # http://hl7.org/fhir/R4/http.html#patch: a patch edits one resource; it
    # can neither turn it into another type nor move it to another id.
    if not isinstance(patched, dict):
        raise fail("the patch must leave a resource (a JSON object)")
    for key in ("resourceType", "id"):
        if patched.get(key, _MISSING) != original.get(key, _MISSING):
            raise fail(f"a patch must not change the resource's `{key}`")


def _too_deep(value: object) -> bool:
    """True if ``value`` nests deeper than any valid resource may (validate.MAX_DEPTH).

    Checked without recursion before anything copies the value: a body that
    JSON can parse may still be deep enough to exhaust the recursion of
    ``copy.deepcopy``.
    """
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


# --------------------------------------------------------------------------
# JSON Patch (RFC 6902)
# --------------------------------------------------------------------------

_JSON_PATCH_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})
_NEEDS_VALUE = frozenset({"add", "replace", "test"})
_NEEDS_FROM = frozenset({"move", "copy"})


def _json_label(index: int, operation: object) -> str:
    if isinstance(operation, Mapping):
        op, path = operation.get("op"), operation.get("path")
        if isinstance(op, str) and isinstance(path, str):
            return f"JSON Patch operation [{index}] (`{op}` {path[:120]})"
    return f"JSON Patch operation [{index}]"


def _json_error(cls: type[FhirError], index: int | None, operation: object, text: str) -> FhirError:
    where = "JSON Patch" if index is None else _json_label(index, operation)
    message = f"{where}: {text}"
    return cls(message, issues=[Issue(code=cls.code, diagnostics=message)])


def _checked_json_operation(index: int, operation: object) -> dict:
    """One operation of the document, checked for RFC 6902 section 4 before anything runs."""

    def bad(text: str) -> FhirError:
        return _json_error(BadRequest, index, operation, text)

    if not isinstance(operation, dict):
        raise bad(f"an operation must be a JSON object, not {json_kind(operation)}")
    op = operation.get("op")
    if not isinstance(op, str):
        raise bad("the operation has no `op` (add, remove, replace, move, copy or test)")
    if op not in _JSON_PATCH_OPS:
        raise bad(f"unknown op `{op[:40]}` (add, remove, replace, move, copy or test)")
    members = ["path", "from"] if op in _NEEDS_FROM else ["path"]
    for member in members:
        pointer = operation.get(member)
        if not isinstance(pointer, str):
            raise bad(f"`{op}` needs a `{member}` (a JSON Pointer string)")
        try:
            JsonPointer(pointer)
        except JsonPointerException as exc:
            raise bad(
                f"`{member}` `{pointer[:120]}` is not a JSON Pointer (RFC 6901): {exc}"
            ) from None
    if op in _NEEDS_VALUE and "value" not in operation:
        raise bad(f"`{op}` needs a `value`")
    if _too_deep(operation.get("value")):
        raise bad(f"the `value` is nested more than {MAX_DEPTH} levels deep")
    return operation


def _pointer_problem(document: object, pointer: str, whole: bool) -> str | None:
    """Why ``pointer`` does not reach into ``document``, or None if it does.

    With ``whole`` false only the parent must exist (the target of an ``add``).
    The library's own messages quote the whole document, which is no message
    for a client (nor for a log); this names the first part that is missing.
    """
    parts = JsonPointer(pointer).parts
    node = document
    reached = ""
    for part in parts if whole else parts[:-1]:
        if isinstance(node, dict):
            if part not in node:
                return f"`{reached}/{part}` does not exist"
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or (part != "0" and part.startswith("0")):
                return f"`{reached}` is an array; `{part}` is not an index of it"
            if int(part) >= len(node):
                return f"`{reached}` has no item {part} (it has {len(node)})"
            node = node[int(part)]
        else:
            return f"`{reached or '/'}` is {json_kind(node)}, not an object or array"
        reached += "/" + part.replace("~", "~0").replace("/", "~1")
    if not whole and parts and not isinstance(node, (dict, list)):
        return f"`{reached or '/'}` is {json_kind(node)}, not an object or array"
    return None


def _short(value: object) -> str:
    try:
        text = jsonio.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_failure(document: object, operation: dict, exc: Exception) -> str:
    """The client's explanation of why ``operation`` failed on ``document``."""
    op = operation["op"]
    if "from" in operation and op in _NEEDS_FROM:
        problem = _pointer_problem(document, operation["from"], whole=True)
        if problem:
            return f"`from`: {problem}"
    problem = _pointer_problem(
        document, operation["path"], whole=op in ("remove", "replace", "test")
    )
    if problem:
        return problem
    if isinstance(exc, jsonpatch.JsonPatchTestFailed):
        found = JsonPointer(operation["path"]).resolve(document)
        return f"the test failed: the value is {_short(found)}, not {_short(operation['value'])}"
    # The library's remaining messages name no content: "can't insert outside
    # of list", "Cannot move values into their own children", ...
    return str(exc)[:200]


def apply_json_patch(resource: dict, operations: object) -> dict:
    """``resource`` with the JSON Patch ``operations`` applied, as a new dict.

    RFC 6902 over http://hl7.org/fhir/R4/http.html#patch. All six operations;
    the operations run in order and the patch is all or nothing. The whole
    document is checked (400) before the first operation runs, so a malformed
    patch never gets as far as a 422.
    """
    if not isinstance(operations, list):
        raise _json_error(
            BadRequest,
            None,
            operations,
            f"the body must be a JSON array of operations, not {json_kind(operations)}",
        )
    checked = [_checked_json_operation(i, op) for i, op in enumerate(operations)]
    document: Any = copy.deepcopy(resource)
    for index, operation in enumerate(checked):

        def unprocessable(text: str, index: int = index, operation: dict = operation) -> FhirError:
            return _json_error(Unprocessable, index, operation, text)

        try:
            # One operation at a time so that a failure names its own index;
            # in place on our own copy, which nobody else sees; atomic so that
            # a failed operation (a move whose add fails after its remove)
            # leaves the copy as it was, and the message describes that.
            document = jsonpatch.JsonPatch([operation]).apply(document, in_place=True, atomic=True)
        except (
            jsonpatch.JsonPatchException,
            JsonPointerException,
            TypeError,
            ValueError,
            IndexError,
            KeyError,
        ) as exc:
            # A failed test, a missing member or index, an index past the end,
            # a path through a primitive, `-` in a replace: the patch does not
            # fit this resource.
            raise unprocessable(_json_failure(document, operation, exc)) from None
        _identity_check(resource, document, unprocessable)
    return document


# --------------------------------------------------------------------------
# FHIRPath Patch: the path locator
# --------------------------------------------------------------------------
#
# A FHIRPath Patch path selects the elements to work on; an engine that only
# returns values cannot delete or replace them, so this small evaluator keeps,
# for each selected element, the object and key (and list index) that hold
# it. It understands the subset of FHIRPath that patch paths use: member
# access, ``[n]``, ``first()``, ``last()`` and ``where()`` over equality tests
# joined with ``and``, evaluated with the FHIRPath collection semantics
# (http://hl7.org/fhirpath/N1/#path-selection).


class PathSyntaxError(ValueError):
    """The path is not in the FHIRPath subset this locator understands."""


@dataclass(frozen=True, slots=True)
class _Comparison:
    operand: tuple[str, ...]  # member names from the item; ``$this`` is the empty tuple
    negate: bool  # ``!=`` rather than ``=``
    literal: str | int | Decimal | bool


@dataclass(frozen=True, slots=True)
class _Step:
    kind: str  # "member" | "index" | "first" | "last" | "where"
    name: str = ""
    index: int = 0
    where: tuple[_Comparison, ...] = ()


@dataclass(frozen=True, slots=True)
class _Path:
    text: str
    type_name: str | None  # the leading resource type, when the path names one
    steps: tuple[_Step, ...]


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<quoted>`[^`]+`)
      | (?P<this>\$this)
      | (?P<op>!=|[.\[\]()=])
    )""",
    re.VERBOSE,
)
_ESCAPES = {
    "'": "'",
    '"': '"',
    "`": "`",
    "\\": "\\",
    "/": "/",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_FUNCTIONS = frozenset({"first", "last", "where"})


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = body[i + 1]
        if code == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        else:
            raise PathSyntaxError(f"unknown escape `\\{code}` in a string literal")
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise PathSyntaxError(f"unexpected `{text[position:].strip()[:20]}` at {position}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "quoted":
            kind, value = "ident", value[1:-1]
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        i = self.at + offset
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        got_kind, got = self.peek()
        if got_kind != kind or (value is not None and got != value):
            wanted = f"`{value}`" if value is not None else f"a {kind}"
            found = f"`{got}`" if got_kind != "end" else "the end of the path"
            raise PathSyntaxError(f"expected {wanted}, found {found}")
        self.at += 1
        return got

    def path(self, text: str) -> _Path:
        first = self.take("ident")
        steps: list[_Step] = []
        # http://hl7.org/fhirpath/N1/#path-selection: a leading type name
        # (``Patient.name``) filters the context; a lower-case name is an
        # element of the resource itself.
        type_name: str | None = first
        if first[:1].islower():
            type_name = None
            steps.append(self.member_or_function(first))
        while self.peek()[0] != "end":
            kind, value = self.peek()
            if (kind, value) == ("op", "."):
                self.at += 1
                steps.append(self.member_or_function(self.take("ident")))
            elif (kind, value) == ("op", "["):
                self.at += 1
                number = self.take("number")
                if not number.isdigit():
                    raise PathSyntaxError(f"an index must be a non-negative integer, not {number}")
                self.take("op", "]")
                steps.append(_Step("index", index=int(number)))
            else:
                raise PathSyntaxError(f"unexpected `{value}`")
        return _Path(text, type_name, tuple(steps))

    def member_or_function(self, name: str) -> _Step:
        if self.peek() != ("op", "("):
            return _Step("member", name=name)
        self.at += 1
        if name not in _FUNCTIONS:
            raise PathSyntaxError(
                f"the function `{name}()` is not supported in patch paths "
                "(only first(), last() and where())"
            )
        if name == "where":
            comparisons = [self.comparison()]
            while self.peek() == ("ident", "and"):
                self.at += 1
                comparisons.append(self.comparison())
            self.take("op", ")")
            return _Step("where", where=tuple(comparisons))
        self.take("op", ")")
        return _Step(name)

    def comparison(self) -> _Comparison:
        operand: list[str] = []
        if self.peek()[0] == "this":
            self.at += 1
        else:
            operand.append(self.take("ident"))
        while self.peek() == ("op", "."):
            self.at += 1
            operand.append(self.take("ident"))
        kind, value = self.peek()
        if kind != "op" or value not in ("=", "!="):
            raise PathSyntaxError("where() takes comparisons `element = literal` joined with `and`")
        self.at += 1
        return _Comparison(tuple(operand), value == "!=", self.literal())

    def literal(self) -> str | int | Decimal | bool:
        kind, value = self.peek()
        self.at += 1
        if kind == "string":
            return _unescape(value[1:-1])
        if kind == "number":
            return Decimal(value) if "." in value else int(value)
        if (kind, value) == ("ident", "true"):
            return True
        if (kind, value) == ("ident", "false"):
            return False
        self.at -= 1
        raise PathSyntaxError(
            f"expected a string, number or boolean literal, found `{value or 'the end'}`"
        )


def parse_path(text: str) -> _Path:
    """Parse a FHIRPath Patch path; :class:`PathSyntaxError` if it is outside the subset."""
    if not text.strip():
        raise PathSyntaxError("the path is empty")
    return _Parser(text).path(text)


class _LocateError(Exception):
    """The path does not fit the resource (an unknown element, a step into a primitive)."""


@dataclass(eq=False, slots=True)
class _Node:
    """One selected element and where it lives, so that it can be changed in place."""

    value: Any  # the element's JSON (a dict for complex elements and resources)
    path: str  # FHIRPath of this element in the resource, for messages
    info: ElementInfo | None = None  # its definition in the parent (None for the root)
    model: Any = None  # the model class of a complex value, None when unknown or primitive
    parent: _Node | None = None  # the node whose object holds this element
    key: str = ""  # its JSON name in the parent object
    index: int | None = None  # its position, when the element repeats


def _table(model: Any) -> Mapping[str, ElementInfo]:
    return elements(model) if model is not None else {}


def _choice_names(table: Mapping[str, ElementInfo], name: str) -> list[str]:
    return [key for key, info in table.items() if info.choice == name]


def _child_model(info: ElementInfo | None, value: object) -> Any:
    if info is not None and info.type == "Resource" and isinstance(value, dict):
        rtype = value.get("resourceType")
        return resource_model(rtype) if isinstance(rtype, str) else None
    return info.model if info is not None else None


def _member_keys(node: _Node, name: str) -> list[tuple[str, ElementInfo | None]]:
    """The JSON names (with definitions) that the FHIRPath member ``name`` reads in ``node``."""
    if not isinstance(node.value, dict):
        raise _LocateError(
            f"`{node.path}` is a primitive value; paths into its id or extensions are not supported"
        )
    table = _table(node.model)
    if table:
        info = table.get(name)
        if info is not None and info.choice is None:
            return [(name, info)]
        choices = _choice_names(table, name)
        if choices:  # ``Observation.value`` reads whichever value[x] is there
            return [(key, table[key]) for key in choices if key in node.value]
        if info is not None:  # a choice spelt with its type: ``valueQuantity``
            return [(name, info)]
        raise _LocateError(f"`{node.path}` has no element `{name}`")
    # No definition to go by (a contained resource of an unknown type): the
    # element itself, or a choice element spelt ``name`` + a type.
    if name in node.value:
        return [(name, None)]
    return [
        (key, None)
        for key in node.value
        if key.startswith(name) and key[len(name) : len(name) + 1].isupper()
    ]


def _children(node: _Node, name: str) -> list[_Node]:
    found: list[_Node] = []
    for key, info in _member_keys(node, name):
        value = node.value.get(key)
        if value is None:
            continue
        path = f"{node.path}.{key}"
        if isinstance(value, list):
            for i, item in enumerate(value):
                model = _child_model(info, item)
                found.append(_Node(item, f"{path}[{i}]", info, model, node, key, i))
        else:
            found.append(_Node(value, path, info, _child_model(info, value), node, key))
    return found


def _equal(value: object, literal: object) -> bool:
    # FHIRPath equality (http://hl7.org/fhirpath/N1/#equals): like types only;
    # JSON true is not the number 1, though Python says so.
    if isinstance(literal, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(literal, bool) and value is literal
    if isinstance(literal, (int, Decimal)):
        return isinstance(value, (int, float, Decimal)) and value == literal
    return isinstance(value, str) and value == literal


def _matches(node: _Node, comparison: _Comparison) -> bool:
    selected = [node]
    for name in comparison.operand:
        selected = [child for item in selected for child in _children(item, name)]
    # ``=`` between a collection and one literal is only true (or, negated,
    # false) when the collection holds exactly one item; empty is not true.
    if len(selected) != 1:
        return False
    equal = _equal(selected[0].value, comparison.literal)
    return equal != comparison.negate


def _evaluate(root: _Node, path: _Path, steps: tuple[_Step, ...] | None = None) -> list[_Node]:
    if path.type_name is not None and path.type_name != root.value.get("resourceType"):
        raise _LocateError(
            f"the path starts with `{path.type_name}` but the resource is a "
            f"`{root.value.get('resourceType')}`"
        )
    collection = [root]
    for step in path.steps if steps is None else steps:
        if step.kind == "member":
            collection = [child for node in collection for child in _children(node, step.name)]
        elif step.kind == "index":
            collection = collection[step.index : step.index + 1]
        elif step.kind == "first":
            collection = collection[:1]
        elif step.kind == "last":
            collection = collection[-1:]
        else:
            collection = [n for n in collection if all(_matches(n, c) for c in step.where)]
    return collection


# --------------------------------------------------------------------------
# FHIRPath Patch: the Parameters document
# --------------------------------------------------------------------------

_TYPES = ("add", "insert", "delete", "replace", "move")
_PARTS = frozenset({"type", "path", "name", "value", "index", "source", "destination"})
# Which parts each type needs (fhirpatch.html, the table of operations).
_REQUIRED = {
    "add": ("path", "name", "value"),
    "insert": ("path", "value", "index"),
    "delete": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "source", "destination"),
}
_ELEMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Deeper nested value parts than any real datatype needs; bounds the recursion.
_MAX_PART_DEPTH = 32

_PRIMITIVE_TYPES = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
        "instant", "integer", "integer64", "markdown", "oid", "positiveInt", "string", "time",
        "unsignedInt", "uri", "url", "uuid",
    }
)  # fmt: skip
# Quantity and its profiles (http://hl7.org/fhir/R4/datatypes.html#quantity)
# share one JSON shape; an element typed Quantity takes any of them.
_QUANTITIES = frozenset(
    {"Quantity", "SimpleQuantity", "MoneyQuantity", "Age", "Count", "Distance", "Duration"}
)


@dataclass(frozen=True, slots=True)
class _Value:
    """The ``value`` part of an operation: a value[x], a resource, or parts of a complex value."""

    suffix: str | None = None  # ``HumanName`` of ``valueHumanName``
    json: Any = None  # the value[x] (or resource) JSON
    extension: Any = None  # the ``_valueX`` object of a primitive value, if any
    parts: tuple[tuple[str, _Value], ...] = ()  # (name, value) of each part of a complex value
    resource: bool = False

    @property
    def fhir_type(self) -> str | None:
        if self.resource:
            return "Resource"
        if self.suffix is None:
            return None
        lowered = self.suffix[:1].lower() + self.suffix[1:]
        return lowered if lowered in _PRIMITIVE_TYPES else self.suffix

    @property
    def primitive(self) -> bool:
        return self.fhir_type in _PRIMITIVE_TYPES


@dataclass(frozen=True, slots=True)
class _Operation:
    index: int
    type: str
    path: _Path
    name: str | None = None
    value: _Value | None = None
    position: int | None = None  # ``index`` of insert
    source: int | None = None
    destination: int | None = None


def _fhirpath_error(
    cls: type[FhirError], index: int | None, kind: str | None, text: str
) -> FhirError:
    if index is None:
        message = f"FHIRPath Patch: {text}"
        where: tuple[str, ...] = ()
    else:
        label = f" ({kind})" if kind else ""
        message = f"FHIRPath Patch operation [{index}]{label}: {text}"
        where = (f"Parameters.parameter[{index}]",)
    return cls(message, issues=[Issue(code=cls.code, diagnostics=message, expression=where)])


def _value_keys(part: dict) -> list[str]:
    return [k for k in part if k.startswith("value") and k[5:6].isupper()]


def _parse_value(part: dict, fail: Callable[[str], FhirError], depth: int = 0) -> _Value:
    """The value a ``value`` part (or a nested part) carries (fhirpatch.html, Parameters encoding)."""
    if depth > _MAX_PART_DEPTH:
        raise fail(f"value parts are nested more than {_MAX_PART_DEPTH} levels deep")
    keys = _value_keys(part)
    forms = len(keys) + ("resource" in part) + ("part" in part)
    if forms != 1:
        raise fail(
            f"the part `{part.get('name')}` must carry exactly one of a value[x], "
            "a resource or nested parts"
        )
    if keys:
        key = keys[0]
        if part[key] is None:
            raise fail(f"`{key}` must not be null")
        if _too_deep(part[key]) or _too_deep(part.get("_" + key)):
            raise fail(f"`{key}` is nested more than {MAX_DEPTH} levels deep")
        return _Value(suffix=key[5:], json=part[key], extension=part.get("_" + key))
    if "resource" in part:
        if not isinstance(part["resource"], dict):
            raise fail("`resource` must be a JSON object")
        if _too_deep(part["resource"]):
            raise fail(f"`resource` is nested more than {MAX_DEPTH} levels deep")
        return _Value(json=part["resource"], resource=True)
    parts = part["part"]
    if not isinstance(parts, list) or not parts:
        raise fail(f"the parts of `{part.get('name')}` must be a non-empty array")
    children: list[tuple[str, _Value]] = []
    for child in parts:
        if not isinstance(child, dict) or not isinstance(child.get("name"), str):
            raise fail(f"each part of `{part.get('name')}` must be an object with a `name`")
        if not _ELEMENT_NAME.fullmatch(child["name"]):
            raise fail(f"`{child['name'][:60]}` is not an element name")
        children.append((child["name"], _parse_value(child, fail, depth + 1)))
    return _Value(parts=tuple(children))


def _integer_part(part: dict, fail: Callable[[str], FhirError]) -> int:
    value = part.get("valueInteger")
    if type(value) is not int or value < 0:
        raise fail(f"`{part['name']}` must be a valueInteger of 0 or more")
    return value


def _parse_operation(index: int, parameter: object) -> _Operation:
    kind: str | None = None

    def bad(text: str) -> FhirError:
        return _fhirpath_error(BadRequest, index, kind, text)

    if not isinstance(parameter, dict):
        raise bad(f"a parameter must be a JSON object, not {json_kind(parameter)}")
    if parameter.get("name") != "operation":
        raise bad(f"every parameter must be named `operation`, not `{parameter.get('name')}`")
    parts = parameter.get("part")
    if not isinstance(parts, list) or not parts:
        raise bad("the operation has no parts")
    by_name: dict[str, dict] = {}
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise bad("each part must be a JSON object with a `name`")
        name = part["name"]
        if name not in _PARTS:
            raise bad(
                f"unknown part `{name[:40]}` (type, path, name, value, index, source, destination)"
            )
        if name in by_name:
            raise bad(f"the part `{name}` is given twice")
        by_name[name] = part
    type_part = by_name.get("type")
    kind = type_part.get("valueCode") if type_part is not None else None
    if kind not in _TYPES:
        kind = None
        raise bad("the `type` part must be a valueCode of add, insert, delete, replace or move")
    missing = [name for name in _REQUIRED[kind] if name not in by_name]
    if missing:
        raise bad(f"`{kind}` needs the part(s) {', '.join(f'`{m}`' for m in missing)}")
    path_text = by_name["path"].get("valueString")
    if not isinstance(path_text, str):
        raise bad("the `path` part must be a valueString")
    try:
        path = parse_path(path_text)
    except (PathSyntaxError, IndexError) as exc:
        raise bad(f"the path `{path_text[:120]}` is not a supported FHIRPath: {exc}") from None
    if kind in ("insert", "move") and (not path.steps or path.steps[-1].kind != "member"):
        raise bad(f"`{kind}` needs a path that ends with the name of the list's element")
    name = None
    if kind == "add":
        name = by_name["name"].get("valueString")
        if not isinstance(name, str) or not _ELEMENT_NAME.fullmatch(name):
            raise bad("the `name` part must be a valueString holding an element name")
    value = _parse_value(by_name["value"], bad) if kind in ("add", "insert", "replace") else None
    return _Operation(
        index=index,
        type=kind,
        path=path,
        name=name,
        value=value,
        position=_integer_part(by_name["index"], bad) if kind == "insert" else None,
        source=_integer_part(by_name["source"], bad) if kind == "move" else None,
        destination=_integer_part(by_name["destination"], bad) if kind == "move" else None,
    )


def _parse_parameters(parameters: object) -> list[_Operation]:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise _fhirpath_error(
            BadRequest, None, None, "the body must be a Parameters resource (fhirpatch.html)"
        )
    entries = parameters.get("parameter", [])
    if not isinstance(entries, list):
        raise _fhirpath_error(BadRequest, None, None, "`Parameters.parameter` must be an array")
    return [_parse_operation(i, entry) for i, entry in enumerate(entries)]


# --------------------------------------------------------------------------
# FHIRPath Patch: building values and changing the resource
# --------------------------------------------------------------------------


class _ApplyError(Exception):
    """An operation that cannot be applied to this resource (becomes a 422)."""


def _check_type(info: ElementInfo | None, value: _Value, where: str) -> None:
    # fhirpatch.html: "The type of the value must be correct for the place at
    # which it will be added/inserted. Servers SHALL return an error if the
    # type is wrong." Primitives share JSON shapes (a date is a string), so
    # their formats are left to the validation of the result.
    if info is None:
        return
    got = value.fhir_type
    if got is None:  # nested parts: an anonymous (backbone) or datatype value
        if info.primitive:
            raise _ApplyError(f"`{where}` is a primitive ({info.type}); it needs a value[x]")
        return
    if info.type == "Resource" or value.resource:
        if info.type != got:
            raise _ApplyError(f"`{where}` is of type {info.type}, not {got}")
        return
    if info.primitive != value.primitive:
        raise _ApplyError(f"`{where}` is of type {info.type}, not {got}")
    if not info.primitive and got != info.type and not {got, info.type} <= _QUANTITIES:
        raise _ApplyError(f"`{where}` is of type {info.type}, not {got}")


def _resolve_name(
    table: Mapping[str, ElementInfo], name: str, value: _Value, where: str
) -> tuple[str, ElementInfo | None]:
    """The JSON name and definition of the element ``name`` that ``value`` would become."""
    if not table:
        return name, None  # no definition to go by: the name as given
    info = table.get(name)
    if info is not None:  # also a choice spelt with its type: ``valueQuantity``
        return name, info
    if _choice_names(table, name):
        if value.suffix is None:
            raise _ApplyError(f"`{where}.{name}[x]` is a choice element; it needs a typed value[x]")
        key = name + value.suffix
        if key not in table and value.suffix in _QUANTITIES:
            key = name + "Quantity"  # an Age is a Quantity: it goes in valueQuantity
        if key not in table:
            raise _ApplyError(f"`{where}.{name}[x]` cannot be of type {value.fhir_type}")
        return key, table[key]
    raise _ApplyError(f"`{where}` has no element `{name}`")


def _build(value: _Value, info: ElementInfo | None, where: str) -> tuple[Any, Any]:
    """The JSON of ``value`` placed as the element ``info``, and its ``_name`` extension object."""
    _check_type(info, value, where)
    if not value.parts:
        return copy.deepcopy(value.json), copy.deepcopy(value.extension)
    model = info.model if info is not None else None
    table = _table(model)
    built: dict[str, Any] = {}
    for name, child in value.parts:
        key, child_info = _resolve_name(table, name, child, where)
        json, extension = _build(child, child_info, f"{where}.{key}")
        many = child_info.many if child_info is not None else key in built
        if not many:
            if key in built:
                raise _ApplyError(f"`{where}.{key}` does not repeat; it was given twice")
            built[key] = json
            if extension is not None:
                built["_" + key] = extension
            continue
        if key in built and not isinstance(built[key], list):  # untyped: a second one
            built[key] = [built[key]]
            if "_" + key in built:
                built["_" + key] = [built["_" + key]]
        items = built.setdefault(key, [])
        if extension is not None or "_" + key in built:
            extensions = built.setdefault("_" + key, [None] * len(items))
            extensions.append(extension)
        items.append(json)
    return built, None


def _element_info(node: _Node, name: str) -> tuple[str, ElementInfo | None]:
    """The JSON name and definition of the list element ``name`` of ``node`` (insert, move)."""
    if not isinstance(node.value, dict):
        raise _ApplyError(f"`{node.path}` is a primitive value; it has no `{name}`")
    table = _table(node.model)
    if not table:
        return name, None
    info = table.get(name)
    if info is None:
        raise _ApplyError(f"`{node.path}` has no element `{name}`")
    if not info.many:
        raise _ApplyError(f"`{node.path}.{name}` does not repeat; it is not a list")
    return name, info


def _list_of(container: dict, key: str, where: str) -> list:
    items = container.get(key, [])
    if not isinstance(items, list):
        raise _ApplyError(f"`{where}` is not a list")
    return items


def _insert_item(container: dict, key: str, position: int, item: Any, extension: Any) -> None:
    items = container.setdefault(key, [])
    extensions = container.get("_" + key)
    if extension is not None and not isinstance(extensions, list):
        extensions = container["_" + key] = [None] * len(items)
    items.insert(position, item)
    if isinstance(extensions, list):
        extensions.insert(position, extension)


def _set_extension(container: dict, key: str, index: int | None, extension: Any) -> None:
    ext_key = "_" + key
    if index is None:
        if extension is None:
            container.pop(ext_key, None)
        else:
            container[ext_key] = extension
        return
    extensions = container.get(ext_key)
    if extension is not None and not isinstance(extensions, list):
        extensions = container[ext_key] = [None] * len(container[key])
    if isinstance(extensions, list) and index < len(extensions):
        extensions[index] = extension
        if all(e is None for e in extensions):
            del container[ext_key]


def _remove(node: _Node) -> None:
    """Remove ``node`` from its parent, then every object or list left empty by that.

    http://hl7.org/fhir/R4/json.html: FHIR JSON has no empty objects or arrays.
    A primitive's ``_name`` extension object goes with it.
    """
    parent = node.parent
    assert parent is not None  # the root is never removed
    container = parent.value
    if node.index is None:
        container.pop(node.key, None)
        container.pop("_" + node.key, None)
    else:
        items = container[node.key]
        del items[node.index]
        extensions = container.get("_" + node.key)
        if isinstance(extensions, list) and node.index < len(extensions):
            del extensions[node.index]
            if all(e is None for e in extensions):
                del container["_" + node.key]
        if not items:
            del container[node.key]
            container.pop("_" + node.key, None)
    if not container and parent.parent is not None:
        _remove(parent)


def _one(nodes: list[_Node], path: _Path) -> _Node:
    if not nodes:
        raise _ApplyError(f"the path `{path.text}` matches no element")
    if len(nodes) > 1:
        raise _ApplyError(
            f"the path `{path.text}` matches {len(nodes)} elements; this operation needs exactly one"
        )
    return nodes[0]


def _list_parent(root: _Node, operation: _Operation) -> tuple[_Node, str, ElementInfo | None]:
    path = operation.path
    container = _one(_evaluate(root, path, path.steps[:-1]), path)
    key, info = _element_info(container, path.steps[-1].name)
    return container, key, info


def _add(root: _Node, operation: _Operation) -> None:
    assert operation.name is not None and operation.value is not None
    target = _one(_evaluate(root, operation.path), operation.path)
    if not isinstance(target.value, dict):
        raise _ApplyError(f"`{target.path}` is a primitive value; nothing can be added to it")
    table = _table(target.model)
    key, info = _resolve_name(table, operation.name, operation.value, target.path)
    json, extension = _build(operation.value, info, f"{target.path}.{key}")
    container = target.value
    existing = container.get(key)
    many = info.many if info is not None else isinstance(existing, list)
    if many:
        items = _list_of(container, key, f"{target.path}.{key}")
        _insert_item(container, key, len(items), json, extension)
        return
    # fhirpatch.html: add is for a non-repeating element only while it is absent.
    present = [key] if info is None or info.choice is None else _choice_names(table, info.choice)
    if any(name in container for name in present):
        raise _ApplyError(
            f"`{target.path}.{operation.name}` already has a value and does not repeat; use replace"
        )
    container[key] = json
    _set_extension(container, key, None, extension)


def _insert(root: _Node, operation: _Operation) -> None:
    assert operation.value is not None and operation.position is not None
    container, key, info = _list_parent(root, operation)
    where = f"{container.path}.{key}"
    items = _list_of(container.value, key, where)
    if operation.position > len(items):
        raise _ApplyError(
            f"index {operation.position} is past the end of `{where}` ({len(items)} items)"
        )
    json, extension = _build(operation.value, info, where)
    _insert_item(container.value, key, operation.position, json, extension)


def _delete(root: _Node, operation: _Operation) -> None:
    nodes = _evaluate(root, operation.path)
    if not nodes:
        return  # fhirpatch.html: delete removes the element "if found"
    target = _one(nodes, operation.path)
    if target.parent is None:
        raise _ApplyError("the resource itself cannot be deleted by a patch")
    _remove(target)


def _replace(root: _Node, operation: _Operation) -> None:
    assert operation.value is not None
    target = _one(_evaluate(root, operation.path), operation.path)
    if target.parent is None:
        raise _ApplyError("the resource itself cannot be replaced by a patch; use update")
    container = target.parent.value
    key, info = target.key, target.info
    if info is not None and info.choice is not None and operation.value.suffix is not None:
        # ``Observation.value`` replaced by a value of another type changes the
        # JSON name: valueQuantity -> valueString.
        where = target.parent.path
        key, info = _resolve_name(_table(target.parent.model), info.choice, operation.value, where)
    json, extension = _build(operation.value, info, f"{target.parent.path}.{key}")
    if key != target.key:
        container.pop(target.key, None)
        container.pop("_" + target.key, None)
    if target.index is None:
        container[key] = json
    else:
        container[key][target.index] = json
    _set_extension(container, key, target.index, extension)


def _move(root: _Node, operation: _Operation) -> None:
    assert operation.source is not None and operation.destination is not None
    container, key, _ = _list_parent(root, operation)
    where = f"{container.path}.{key}"
    items = _list_of(container.value, key, where)
    for label, position in (("source", operation.source), ("destination", operation.destination)):
        if position >= len(items):
            raise _ApplyError(f"{label} {position} is outside `{where}` ({len(items)} items)")
    extensions = container.value.get("_" + key)
    item = items.pop(operation.source)
    items.insert(operation.destination, item)
    if isinstance(extensions, list) and len(extensions) == len(items):
        extensions.insert(operation.destination, extensions.pop(operation.source))


_APPLY: dict[str, Callable[[_Node, _Operation], None]] = {
    "add": _add,
    "insert": _insert,
    "delete": _delete,
    "replace": _replace,
    "move": _move,
}


def apply_fhirpath_patch(resource: dict, parameters: object) -> dict:
    """``resource`` with the FHIRPath Patch ``parameters`` applied, as a new dict.

    http://hl7.org/fhir/R4/fhirpatch.html: a Parameters resource with one
    ``operation`` parameter per change, applied in order, all or nothing. The
    whole document is checked (400) before the first operation runs.
    """
    operations = _parse_parameters(parameters)
    document = copy.deepcopy(resource)
    rtype = document.get("resourceType")
    root = _Node(
        document, rtype if isinstance(rtype, str) else "Resource", None, _root_model(rtype)
    )
    for operation in operations:

        def unprocessable(text: str, operation: _Operation = operation) -> FhirError:
            return _fhirpath_error(Unprocessable, operation.index, operation.type, text)

        try:
            _APPLY[operation.type](root, operation)
        except (_ApplyError, _LocateError) as exc:
            raise unprocessable(str(exc)) from None
        _identity_check(resource, document, unprocessable)
    return document


def _root_model(rtype: object) -> Any:
    return resource_model(rtype) if isinstance(rtype, str) else None
