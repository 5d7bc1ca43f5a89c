"""Reading and validating manifests for ``tabbyctl``: files, directories, stdin; YAML or JSON.

Role: turn ``-f`` arguments into validated ``Resource`` values, or into a complete list of
problems. Pure apart from reading the named files (no datastore access), so ``validate`` works
offline and ``apply``/``create``/``replace``/``delete`` can refuse a bad set before writing.

Inputs: paths (a file, a directory: its ``*.yaml``, ``*.yml``, ``*.json`` files sorted by name,
optionally recursive; ``-`` = stdin), the default namespace. Each source may hold several YAML
documents (``---``) or concatenated JSON objects; a document of kind ``List`` (or
``<Kind>List``, as ``tabbyctl get -o yaml`` prints) contributes its ``items``.
Outputs: ``LoadResult`` with ``resources`` (each with its ``Document`` origin) and ``problems``
(each naming the location: source, document number, List item, line; the kind, namespace/name;
and every field error).

Invariants:
- ``load`` reports EVERY invalid document, never just the first; the caller writes nothing when
  ``problems`` is non-empty (all-or-nothing).
- YAML timestamps are not converted: ``creationTimestamp: 2024-05-01T12:00:00Z`` stays a string,
  as in JSON.
- Namespaced kinds without ``metadata.namespace`` get the default namespace (``-n``, else
  ``"default"``); a document whose namespace contradicts an explicit ``-n`` is a problem.
- The same resource (kind, namespace, name) twice in one set is a problem (the outcome would
  depend on order).
- Only unreadable sources (missing file, permission, empty directory) raise ``ManifestError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from datastore.client import DEFAULT_NAMESPACE
from datastore.codec import resource_from_dict
from datastore.errors import FieldError, UnknownKindError, ValidationError
from datastore.kinds import lookup_kind
from datastore.model import Resource

__all__ = [
    "MANIFEST_SUFFIXES",
    "Document",
    "DocumentProblem",
    "LoadResult",
    "ManifestError",
    "Source",
    "load",
    "parse_source",
    "read_sources",
    "validate_documents",
]

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN_NAME = "<stdin>"


class ManifestError(Exception):
    """A manifest source could not be read at all (missing file, empty directory, ...)."""


@dataclass(frozen=True, slots=True)
class Source:
    """The text of one manifest source; ``name`` is the path as given (or ``<stdin>``)."""

    name: str
    text: str
    json_only: bool = False


@dataclass(frozen=True, slots=True)
class Document:
    """One document (or one item of a List document) and where it came from.

    ``index`` is the 1-based document number in its source, ``item`` the 1-based item number in
    a List (None otherwise), ``line`` the 1-based line it starts on (None when unknown).
    """

    source: str
    index: int
    item: int | None
    line: int | None
    data: object

    @property
    def location(self) -> str:
        text = f"{self.source} document {self.index}"
        if self.item is not None:
            text += f" item {self.item}"
        if self.line is not None:
            text += f" (line {self.line})"
        return text


@dataclass(frozen=True, slots=True)
class DocumentProblem:
    """Everything wrong with one document: where, which resource, and each field error."""

    location: str
    kind: str
    namespace: str | None
    name: str
    errors: tuple[FieldError, ...]

    @property
    def resource(self) -> str:
        kind = self.kind or "<unknown kind>"
        name = self.name or "<unnamed>"
        return f"{kind} {self.namespace}/{name}" if self.namespace else f"{kind} {name}"

    def lines(self) -> list[str]:
        """Human-readable report: a header line, then one indented line per field error."""
        out = [f"{self.location}: {self.resource}:"]
        for e in self.errors:
            out.append(f"  {e.field}: {e.message}" if e.field else f"  {e.message}")
        return out


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Validated resources (in input order, with their origin) and every problem found."""

    resources: tuple[tuple[Document, Resource], ...]
    problems: tuple[DocumentProblem, ...]
    sources: int

    @property
    def ok(self) -> bool:
        return not self.problems


# --- reading ------------------------------------------------------------------------------


def _read_file(path: Path, shown: str) -> Source:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{shown}: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ManifestError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    return Source(shown, text, json_only=path.suffix.lower() == ".json")


def _dir_files(root: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    found = [p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def read_sources(
    paths: Sequence[str], stdin: TextIO | None = None, *, recursive: bool = False
) -> list[Source]:
    """The sources named by ``-f`` arguments, in order (directories expanded, sorted by name)."""
    if not paths:
        raise ManifestError("no manifest given: use -f FILE, -f DIRECTORY or -f -")
    out: list[Source] = []
    for raw in paths:
        if raw == "-":
            if stdin is None:
                raise ManifestError("-f -: no standard input available")
            out.append(Source(STDIN_NAME, stdin.read()))
            continue
        path = Path(raw)
        if path.is_dir():
            files = _dir_files(path, recursive)
            if not files:
                suffixes = ", ".join(f"*{s}" for s in MANIFEST_SUFFIXES)
                raise ManifestError(f"{raw}: directory holds no manifest files ({suffixes})")
            out.extend(_read_file(p, os.path.join(raw, *p.relative_to(path).parts)) for p in files)
        elif path.exists():
            out.append(_read_file(path, raw))
        else:
            raise ManifestError(f"{raw}: no such file or directory")
    return out


# --- parsing ------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves timestamps as strings (as JSON, and Calico, would)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _is_list_kind(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    kind = data.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and "items" in data


def _item_lines(node: yaml.Node) -> list[int]:
    """1-based start lines of the ``items`` of a List document node (empty if not one)."""
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if (
            isinstance(key, yaml.ScalarNode)
            and key.value == "items"
            and isinstance(value, yaml.SequenceNode)
        ):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _problem(location: str, message: str, field: str = "") -> DocumentProblem:
    return DocumentProblem(location, "", None, "", (FieldError("", None, "", field, message),))


def _expand(
    source: str, index: int, line: int | None, data: object, item_lines: list[int]
) -> Iterator[Document | DocumentProblem]:
    """The document itself, or the items of a List document."""
    if data is None:  # an empty document (e.g. only comments, a trailing ---)
        return
    if not _is_list_kind(data):
        yield Document(source, index, None, line, data)
        return
    assert isinstance(data, dict)
    items = data["items"]
    where = Document(source, index, None, line, None).location
    if items is None:
        return
    if not isinstance(items, list):
        yield _problem(where, "expected a list", "items")
        return
    for i, item in enumerate(items, start=1):
        item_line = item_lines[i - 1] if i - 1 < len(item_lines) else None
        if _is_list_kind(item):
            yield _problem(
                Document(source, index, i, item_line, None).location, "a List inside a List"
            )
            continue
        yield Document(source, index, i, item_line, item)


def _parse_yaml(source: Source) -> Iterator[Document | DocumentProblem]:
    loader = _Loader(source.text)
    index = 0
    try:
        while loader.check_node():
            index += 1
            node = loader.get_node()
            assert node is not None  # check_node() said there is one
            data = loader.construct_document(node)
            yield from _expand(
                source.name, index, node.start_mark.line + 1, data, _item_lines(node)
            )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source.name} document {max(index, 1)}"
        if mark is not None:
            where += f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc)
        yield _problem(where, f"invalid YAML: {problem}")
    finally:
        loader.dispose()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(source: Source) -> Iterator[Document | DocumentProblem]:
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    text = source.text
    pos = 0
    index = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return
        index += 1
        line = text.count("\n", 0, pos) + 1
        try:
            data, pos = decoder.raw_decode(text, pos)
        except ValueError as exc:
            yield _problem(f"{source.name} document {index}", f"invalid JSON: {exc}")
            return
        yield from _expand(source.name, index, line, data, [])


def parse_source(source: Source) -> list[Document | DocumentProblem]:
    """The documents of one source (JSON for ``*.json`` files, YAML otherwise: YAML also
    reads JSON), plus a problem for a syntax error (documents after it are not read)."""
    if source.json_only:
        return list(_parse_json(source))
    return list(_parse_yaml(source))


# --- validation ---------------------------------------------------------------------------


def _identity(data: object) -> tuple[str, str | None, str]:
    if not isinstance(data, dict):
        return "", None, ""
    kind = data.get("kind")
    meta = data.get("metadata")
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return (
        kind if isinstance(kind, str) else "",
        ns if isinstance(ns, str) and ns else None,
        name if isinstance(name, str) else "",
    )


def _namespaced(kind: object) -> bool | None:
    """Whether the exact kind is namespaced (None: not a known exact kind; the codec says why)."""
    if not isinstance(kind, str):
        return None
    try:
        info = lookup_kind(kind)
    except UnknownKindError:
        return None
    return info.namespaced if info.kind == kind else None


def _with_namespace(doc: Document, namespace: str | None) -> object | DocumentProblem:
    """The document's data with the default namespace filled in, or a namespace problem."""
    data = doc.data
    if not isinstance(data, dict) or _namespaced(data.get("kind")) is not True:
        return data
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        return data
    given = meta.get("namespace")
    if given is None or given == "":
        return {**data, "metadata": {**meta, "namespace": namespace or DEFAULT_NAMESPACE}}
    if namespace is not None and given != namespace:
        kind, ns, name = _identity(data)
        return DocumentProblem(
            doc.location,
            kind,
            ns,
            name,
            (
                FieldError(
                    kind,
                    ns,
                    name,
                    "metadata.namespace",
                    f"{given!r} does not match the namespace given with -n ({namespace!r})",
                ),
            ),
        )
    return data


def validate_documents(
    docs: Sequence[Document | DocumentProblem], namespace: str | None = None, sources: int = 0
) -> LoadResult:
    """Validate every document (never stopping at the first bad one)."""
    resources: list[tuple[Document, Resource]] = []
    problems: list[DocumentProblem] = []
    seen: dict[tuple[str, str | None, str], str] = {}
    for doc in docs:
        if isinstance(doc, DocumentProblem):
            problems.append(doc)
            continue
        data = _with_namespace(doc, namespace)
        if isinstance(data, DocumentProblem):
            problems.append(data)
            continue
        kind, ns, name = _identity(data)
        try:
            resource = resource_from_dict(data)
        except ValidationError as exc:
            problems.append(DocumentProblem(doc.location, kind, ns, name, tuple(exc.errors)))
            continue
        ident = (resource.kind, resource.namespace, resource.name)
        first = seen.get(ident)
        if first is not None:
            problems.append(
                DocumentProblem(
                    doc.location,
                    *ident,
                    (FieldError(*ident, "", f"the same resource is also defined at {first}"),),
                )
            )
            continue
        seen[ident] = doc.location
        resources.append((doc, resource))
    return LoadResult(tuple(resources), tuple(problems), sources)


def load(
    paths: Sequence[str],
    stdin: TextIO | None = None,
    *,
    namespace: str | None = None,
    recursive: bool = False,
) -> LoadResult:
    """Read, parse and validate every manifest named by ``paths`` (see module docstring)."""
    sources = read_sources(paths, stdin, recursive=recursive)
    docs: list[Document | DocumentProblem] = []
    for source in sources:
        docs.extend(parse_source(source))
    return validate_documents(docs, namespace, len(sources))
