"""HTTP routes read from `google.api.http` annotations, and the matcher that picks one.

A path template (`/api/v1/tasks/{task_id}:watch`) is parsed once into segments: literals,
wildcards (`*`, one segment) and variables (`{field}`, `{field=*}`, `{a.b}`, `{name=shelves/*}`),
plus an optional trailing `:verb`. A request path is split on `/` before it is percent-decoded,
so an escaped `%2F` or `%3A` stays inside its segment; variable values are decoded afterwards.

Which route wins never depends on declaration order: a path ending in `:verb` for a verb some
route declares only matches routes with that verb (so `/tasks/abc:watch` is WatchTask, never
GetTask with the id `abc:watch`; `/tasks/:watch` is 404); other colons are data
(`/tasks/ns:abc` is GetTask). Among routes that match, a literal beats a variable, segment by
segment from the left.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

from flowq.rest.errors import GatewayError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WILDCARD = "*"

FieldPath = tuple[str, ...]


class TemplateError(ValueError):
    """An annotation the gateway cannot serve. Raised when routes are built, never per request."""


@dataclasses.dataclass(frozen=True)
class Variable:
    """`{field_path=pattern}`: binds the segments matched by `pattern` to a request field."""

    field_path: FieldPath
    pattern: tuple[str, ...] = (_WILDCARD,)


@dataclasses.dataclass(frozen=True)
class PathTemplate:
    text: str
    #: Top-level parts: a literal segment, "*" (one unbound segment) or a Variable.
    parts: tuple[str | Variable, ...]
    verb: str

    @functools.cached_property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(part for part in self.parts if isinstance(part, Variable))

    @functools.cached_property
    def _flat(self) -> tuple[tuple[str | None, int], ...]:
        """One (literal or None for a wildcard, index of the variable or -1) per segment."""
        flat: list[tuple[str | None, int]] = []
        index = 0
        for part in self.parts:
            if isinstance(part, Variable):
                flat.extend((None if p == _WILDCARD else p, index) for p in part.pattern)
                index += 1
            else:
                flat.append((None if part == _WILDCARD else part, -1))
        return tuple(flat)

    @functools.cached_property
    def specificity(self) -> tuple[int, ...]:
        """Compared between routes matching the same path: a literal beats a variable."""
        return tuple(0 if literal is None else 1 for literal, _ in self._flat)

    def match(self, segments: Sequence[str]) -> dict[FieldPath, str] | None:
        """Bind raw (still percent-encoded) path segments; None when they do not fit."""
        flat = self._flat
        if len(segments) != len(flat):
            return None
        captured: dict[int, list[str]] = {}
        for segment, (literal, index) in zip(segments, flat, strict=True):
            if literal is not None:
                if segment != literal:
                    return None
            elif not segment:
                return None
            if index >= 0:
                captured.setdefault(index, []).append(segment)
        variables = self.variables
        return {
            variables[index].field_path: "/".join(unquote(s, errors="strict") for s in values)
            for index, values in captured.items()
        }

    def render(self, name: Mapping[FieldPath, str]) -> str:
        """The template with each variable written `{name[field_path]}` (for OpenAPI)."""
        parts = [f"{{{name[p.field_path]}}}" if isinstance(p, Variable) else p for p in self.parts]
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")


def parse_template(text: str) -> PathTemplate:
    """Parse `/a/{b}/c:verb`; raise TemplateError for what this gateway does not support."""
    if not text.startswith("/"):
        raise TemplateError(f"path template {text!r} must start with '/'")
    path, verb = text[1:], ""
    closing = path.rfind("}")
    colon = path.rfind(":")
    if colon > closing and colon > path.rfind("/"):
        path, verb = path[:colon], path[colon + 1 :]
        if not verb:
            raise TemplateError(f"path template {text!r} has an empty verb")
    parts: list[str | Variable] = []
    for segment in _split_outside_braces(path, text):
        if segment.startswith("{") and segment.endswith("}"):
            parts.append(_parse_variable(segment[1:-1], text))
        elif not segment or any(c in segment for c in "{}:") or segment == "**":
            raise TemplateError(f"path template {text!r}: unsupported segment {segment!r}")
        else:
            parts.append(segment)
    template = PathTemplate(text=text, parts=tuple(parts), verb=verb)
    paths = [v.field_path for v in template.variables]
    if len(set(paths)) != len(paths):
        raise TemplateError(f"path template {text!r} binds a field twice")
    return template


def _split_outside_braces(path: str, text: str) -> list[str]:
    segments, depth, start = [], 0, 0
    for i, char in enumerate(path):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "/" and depth == 0:
            segments.append(path[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise TemplateError(f"path template {text!r} has unbalanced braces")
    if depth:
        raise TemplateError(f"path template {text!r} has unbalanced braces")
    segments.append(path[start:])
    return segments


def _parse_variable(inner: str, text: str) -> Variable:
    name, _, pattern = inner.partition("=")
    field_path = tuple(name.split("."))
    if not all(_IDENT.fullmatch(p) for p in field_path):
        raise TemplateError(f"path template {text!r}: bad field path {name!r}")
    sub = tuple(pattern.split("/")) if pattern else (_WILDCARD,)
    for segment in sub:
        if segment == "**" or not segment or any(c in segment for c in "{}:"):
            raise TemplateError(f"path template {text!r}: unsupported variable pattern {pattern!r}")
    return Variable(field_path=field_path, pattern=sub)


@dataclasses.dataclass(frozen=True)
class Route:
    """One HTTP binding of one gRPC method."""

    method: MethodDescriptor
    http_method: str
    template: PathTemplate
    #: "" (no body), "*" (the whole request) or the name of a top-level request field.
    body: str
    #: "" (the whole response) or the name of a top-level response field.
    response_body: str
    #: 0 for the rule itself, 1... for its additional_bindings.
    binding: int

    @property
    def full_method(self) -> str:
        """The gRPC method path, `/flowq.v1.WorkflowService/GetTask`."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def operation_id(self) -> str:
        base = f"{self.method.containing_service.name}_{self.method.name}"
        return f"{base}_{self.binding + 1}" if self.binding else base

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def request_class(self) -> type:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type:
        return message_factory.GetMessageClass(self.method.output_type)


def resolve_field_path(message: Descriptor, path: Sequence[str]) -> list[FieldDescriptor] | None:
    """Field descriptors along `path` (proto or JSON names); None if some part is not a field.

    Every part but the last must be a singular message field.
    """
    fields: list[FieldDescriptor] = []
    descriptor: Descriptor | None = message
    for name in path:
        if descriptor is None:
            return None
        field = descriptor.fields_by_name.get(name) or next(
            (f for f in descriptor.fields if f.json_name == name), None
        )
        if field is None:
            return None
        fields.append(field)
        descriptor = None if field.is_repeated else field.message_type
    return fields


def route_from_rule(method: MethodDescriptor, rule: http_pb2.HttpRule, binding: int = 0) -> Route:
    """Check one HttpRule (not its additional bindings) against the method and compile it."""
    where = f"{method.full_name} (binding {binding})"
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise TemplateError(f"{where}: google.api.http has no pattern")
    if kind == "custom":
        http_method, path = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, path = kind.upper(), getattr(rule, kind)
    template = parse_template(path)
    request = method.input_type
    for variable in template.variables:
        fields = resolve_field_path(request, variable.field_path)
        if fields is None or fields[-1].is_repeated or not url_settable(fields[-1]):
            name = ".".join(variable.field_path)
            raise TemplateError(f"{where}: path variable {name!r} is not a singular scalar field")
    if rule.body not in ("", "*") and rule.body not in request.fields_by_name:
        raise TemplateError(f"{where}: body {rule.body!r} is not a field of {request.full_name}")
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        raise TemplateError(f"{where}: response_body {rule.response_body!r} is not a field")
    return Route(
        method=method,
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        binding=binding,
    )


# Well-known types whose JSON form is one string or scalar, so a URL can carry them.
_URL_MESSAGES = frozenset(
    f"google.protobuf.{name}"
    for name in ("Timestamp", "Duration", "FieldMask", "DoubleValue", "FloatValue", "Int64Value")
    + ("UInt64Value", "Int32Value", "UInt32Value", "BoolValue", "StringValue", "BytesValue")
)


def url_settable(field: FieldDescriptor) -> bool:
    """Whether a URL string can give this field a value: scalars, enums, scalar-like WKTs."""
    return field.message_type is None or field.message_type.full_name in _URL_MESSAGES


def compile_routes(services: Iterable[ServiceDescriptor]) -> list[Route]:
    """Every binding (additional ones too) of every annotated method, in declaration order."""
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            routes.append(route_from_rule(method, rule, 0))
            for index, extra in enumerate(rule.additional_bindings, start=1):
                if extra.additional_bindings:
                    raise TemplateError(f"{method.full_name}: nested additional_bindings")
                routes.append(route_from_rule(method, extra, index))
    seen: dict[tuple[str, str], Route] = {}
    for route in routes:
        key = (route.http_method, route.template.text)
        if key in seen:
            raise TemplateError(
                f"{route.http_method} {route.template.text} is bound by both "
                f"{seen[key].method.full_name} and {route.method.full_name}"
            )
        seen[key] = route
    return routes


@dataclasses.dataclass(frozen=True)
class Match:
    route: Route
    #: Field path (as written in the template) → percent-decoded value.
    params: dict[FieldPath, str]


class Router:
    """Picks the route for (HTTP method, raw path); 404 and 405 are GatewayErrors."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._verbs = frozenset(r.template.verb for r in self.routes if r.template.verb)

    def match(self, http_method: str, raw_path: str) -> Match:
        segments = raw_path.split("/")[1:] if raw_path.startswith("/") else [raw_path]
        last = segments[-1]
        # A trailing ":verb" that some route declares is never data for a verb-less route.
        verb_like = ":" in last and last.rsplit(":", 1)[1] in self._verbs
        candidates: list[Match] = []
        for route in self.routes:
            verb = route.template.verb
            if verb:
                if not last.endswith(f":{verb}"):
                    continue
                path = [*segments[:-1], last[: -len(verb) - 1]]
            elif verb_like:
                continue
            else:
                path = segments
            try:
                params = route.template.match(path)
            except UnicodeDecodeError:
                raise GatewayError(400, "the URL path is not valid UTF-8 once decoded") from None
            if params is not None:
                candidates.append(Match(route, params))
        if not candidates:
            raise GatewayError(404, f"no route for {raw_path}", code=grpc.StatusCode.NOT_FOUND)
        allowed = [m for m in candidates if m.route.http_method == http_method]
        if not allowed:
            methods = ", ".join(sorted({m.route.http_method for m in candidates}))
            raise GatewayError(
                405,
                f"{http_method} is not allowed on {raw_path}; allowed: {methods}",
                code=grpc.StatusCode.UNIMPLEMENTED,
                headers={"Allow": methods},
            )
        return max(allowed, key=lambda m: m.route.template.specificity)
