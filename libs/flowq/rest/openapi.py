"""OpenAPI 3.1 for the REST gateway, from the same descriptors and routes it serves.

Schemas follow the protobuf JSON mapping: camelCase property names, 64-bit integers as
strings, enums as their names, well-known types in their JSON forms. Messages and enums go to
`components.schemas` under their full proto names (`flowq.v1.Task`); errors are
`google.rpc.Status`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import metadata, resources
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    ServiceDescriptor,
)
from google.rpc import status_pb2

from flowq.rest.routes import Route, compile_routes, resolve_field_path, url_settable

_F = FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    _F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _F.TYPE_FLOAT: {"type": "number", "format": "float"},
    _F.TYPE_INT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _F.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    _F.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    _F.TYPE_INT64: {"type": "string", "format": "int64"},
    _F.TYPE_SINT64: {"type": "string", "format": "int64"},
    _F.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    _F.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _F.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}

_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": {}},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": {},
    },
    "google.protobuf.DoubleValue": _SCALARS[_F.TYPE_DOUBLE],
    "google.protobuf.FloatValue": _SCALARS[_F.TYPE_FLOAT],
    "google.protobuf.Int64Value": _SCALARS[_F.TYPE_INT64],
    "google.protobuf.UInt64Value": _SCALARS[_F.TYPE_UINT64],
    "google.protobuf.Int32Value": _SCALARS[_F.TYPE_INT32],
    "google.protobuf.UInt32Value": _SCALARS[_F.TYPE_UINT32],
    "google.protobuf.BoolValue": _SCALARS[_F.TYPE_BOOL],
    "google.protobuf.StringValue": _SCALARS[_F.TYPE_STRING],
    "google.protobuf.BytesValue": _SCALARS[_F.TYPE_BYTES],
}
_NULL_VALUE = "google.protobuf.NullValue"
STATUS_SCHEMA = status_pb2.Status.DESCRIPTOR.full_name


def openapi_document(
    services: Iterable[ServiceDescriptor],
    title: str = "flowq",
    version: str | None = None,
    comments: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every annotated method of `services`, described by the
    protos' own comments (from `comments`, else the packages' `descriptors.binpb`)."""
    services = list(services)
    if comments is None:
        comments = {}
        for package in {service.file.package for service in services}:
            comments.update(package_comments(package))
    schemas = _Schemas(comments)
    status_ref = schemas.message(status_pb2.Status.DESCRIPTOR)
    paths: dict[str, dict[str, Any]] = {}
    for route in compile_routes(services):
        path, operation = _operation(route, schemas, status_ref, comments)
        paths.setdefault(path, {})[route.http_method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version or _package_version()},
        "tags": [{"name": service.name} for service in services],
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.components.items()))},
    }


def _package_version() -> str:
    try:
        return metadata.version("flowq")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def package_comments(package: str) -> dict[str, str]:
    """Leading comments by full proto name (messages, fields, enums, values, services,
    methods), from the `descriptors.binpb` that `make proto` writes next to the generated
    code (protoc `--include_source_info`); empty when there is none."""
    try:
        raw = resources.files(package).joinpath("descriptors.binpb").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return {}
    found: dict[str, str] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        names = _names_by_path(file)
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            text = " ".join(line.strip() for line in location.leading_comments.splitlines())
            if name and text.strip():
                found[name] = text.strip()
    return found


def _names_by_path(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Source-code-info paths (message 4, nested 3, field 2, enum 5, value 2, service 6,
    method 2) to full names."""
    names: dict[tuple[int, ...], str] = {}

    def enum(path: tuple[int, ...], prefix: str, e: descriptor_pb2.EnumDescriptorProto) -> None:
        names[path] = f"{prefix}.{e.name}"
        for j, value in enumerate(e.value):
            names[(*path, 2, j)] = f"{prefix}.{e.name}.{value.name}"

    def message(path: tuple[int, ...], prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        full = f"{prefix}.{m.name}"
        names[path] = full
        for j, field in enumerate(m.field):
            names[(*path, 2, j)] = f"{full}.{field.name}"
        for j, nested in enumerate(m.nested_type):
            message((*path, 3, j), full, nested)
        for j, nested_enum in enumerate(m.enum_type):
            enum((*path, 4, j), full, nested_enum)

    for i, m in enumerate(file.message_type):
        message((4, i), file.package, m)
    for i, e in enumerate(file.enum_type):
        enum((5, i), file.package, e)
    for i, service in enumerate(file.service):
        names[(6, i)] = f"{file.package}.{service.name}"
        for j, method in enumerate(service.method):
            names[(6, i, 2, j)] = f"{file.package}.{service.name}.{method.name}"
    return names


def _operation(
    route: Route, schemas: _Schemas, status_ref: dict, comments: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    request = route.method.input_type
    names: dict[tuple[str, ...], str] = {}
    parameters: list[dict[str, Any]] = []
    bound_top: set[str] = set()
    for variable in route.template.variables:
        fields = resolve_field_path(request, variable.field_path)
        assert fields is not None  # checked by compile_routes
        name = ".".join(f.json_name for f in fields)
        names[variable.field_path] = name
        bound_top.add(fields[0].name)
        parameters.append(
            {"name": name, "in": "path", "required": True, "schema": schemas.field(fields[-1])}
        )
    if route.body != "*":
        bound_top.add(route.body)
        for field in request.fields:
            if field.name in bound_top or not url_settable(field):
                continue
            parameters.append(
                {"name": field.json_name, "in": "query", "schema": schemas.field(field)}
            )

    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": [route.method.containing_service.name],
    }
    described = comments.get(route.method.full_name)
    if described:
        operation["summary"] = described.split(". ")[0].rstrip(".")
        operation["description"] = described
    if parameters:
        operation["parameters"] = parameters
    if route.body:
        body_schema = (
            schemas.message(request)
            if route.body == "*"
            else schemas.field(request.fields_by_name[route.body])
        )
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        }
    output = route.method.output_type
    response_schema = (
        schemas.field(output.fields_by_name[route.response_body])
        if route.response_body
        else schemas.message(output)
    )
    if route.server_streaming:
        ok = {
            "description": f"A stream of {output.full_name}, one JSON object per line; an error "
            'ends the stream with a line {"error": google.rpc.Status}.',
            "content": {"application/x-ndjson": {"schema": response_schema}},
        }
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": response_schema}}}
    operation["responses"] = {
        "200": ok,
        "default": {
            "description": "An error, as google.rpc.Status.",
            "content": {"application/json": {"schema": status_ref}},
        },
    }
    return route.template.render(names), operation


class _Schemas:
    """JSON schemas of messages and enums, collected into components as they are referenced."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self.comments = comments

    def _described(self, schema: dict[str, Any], name: str) -> dict[str, Any]:
        text = self.comments.get(name)
        return {**schema, "description": text} if text else schema

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WKT:
            return dict(_WKT[descriptor.full_name])
        if descriptor.full_name not in self.components:
            self.components[descriptor.full_name] = {}  # placeholder: recursion stops here
            self.components[descriptor.full_name] = self._described(
                {
                    "type": "object",
                    "properties": {
                        f.json_name: self._described(self.field(f), f.full_name)
                        for f in descriptor.fields
                    },
                },
                descriptor.full_name,
            )
        return _ref(descriptor.full_name)

    def enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        if descriptor.full_name == _NULL_VALUE:
            return {"type": "null"}
        if descriptor.full_name not in self.components:
            self.components[descriptor.full_name] = self._described(
                {"type": "string", "enum": [value.name for value in descriptor.values]},
                descriptor.full_name,
            )
        return _ref(descriptor.full_name)

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            value = message.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self._single(field)}
        return self._single(field)

    def _single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}
