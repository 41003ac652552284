"""Manifest files (YAML or JSON, multi-document, `List` kinds) -> objects and errors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netplane.model._fields import InvalidField
from netplane.model._objects import KubeObject
from netplane.model._parse import parse_object

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class ManifestError:
    """Where and why one object (or a whole file) was not accepted."""

    source: str
    document: int  # 1-based; 0 when the whole file is unreadable
    message: str
    kind: str = ""
    name: str = ""
    field: str = ""

    def __str__(self) -> str:
        where = self.source if not self.document else f"{self.source}: document {self.document}"
        if self.kind or self.name:
            where += f" ({self.kind or '?'} {self.name or '?'})"
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"


@dataclass(frozen=True, slots=True)
class LoadResult:
    objects: tuple[KubeObject, ...]
    errors: tuple[ManifestError, ...]
    # (kind, namespace, name) of documents that were rejected but could be identified: a
    # source keeps serving the last good version of those instead of deleting them.
    rejected_keys: frozenset[tuple[str, str, str]] = frozenset()


class _Unreadable(ValueError):
    """A text that is neither YAML nor JSON (YAML's own error, said the same way)."""


def _documents(text: str, source: str) -> list:
    stripped = text.lstrip()
    if source.endswith(".json") or stripped.startswith(("{", "[")):
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    # PyYAML costs ~20 ms to import: only when a text is YAML (the servers' in-cluster
    # starts and JSON manifests read none). libyaml's loader is ~10x faster; fall back
    # where it was not compiled in.
    import yaml

    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return [d for d in yaml.load_all(text, Loader=loader) if d is not None]
    except yaml.YAMLError as e:
        raise _Unreadable(str(e)) from e


@dataclass(frozen=True, slots=True)
class Document:
    """One object as written, with where it came from (a `List` gives one per item)."""

    source: str
    number: int  # 1-based document in the file
    body: Any  # a mapping for a usable document; whatever YAML gave otherwise
    field: str = ""  # `items[2]` for an item of a List


def documents(text: str, source: str = "<stdin>") -> tuple[list[Document], list[ManifestError]]:
    """The documents of one manifest text, unparsed (the emulated cluster's client sends them
    as written); an unreadable text gives one error and no documents."""
    try:
        docs = _documents(text, source)
    except (_Unreadable, json.JSONDecodeError) as e:
        return [], [ManifestError(source, 0, f"not valid YAML/JSON: {e}")]
    out = []
    for number, doc in enumerate(docs, start=1):
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
            items = doc["items"] if isinstance(doc["items"], list) else [None]
            out += [Document(source, number, it, f"items[{i}]") for i, it in enumerate(items)]
        else:
            out.append(Document(source, number, doc))
    return out, []


def parse_manifests(text: str, source: str = "<stdin>") -> LoadResult:
    docs, errors = documents(text, source)
    objects: list[KubeObject] = []
    rejected: set[tuple[str, str, str]] = set()
    for doc in docs:
        item, item_prefix = doc.body, f"{doc.field}." if doc.field else ""
        if not isinstance(item, dict):
            errors.append(
                ManifestError(
                    source,
                    doc.number,
                    "expected a Kubernetes object (a mapping)",
                    field=doc.field,
                )
            )
            continue
        try:
            objects.extend(parse_object(item))
        except InvalidField as e:
            kind, ns, name = _identity(item)
            errors.append(
                ManifestError(
                    source,
                    doc.number,
                    e.message,
                    kind=kind,
                    name=f"{ns}/{name}" if ns else name,
                    field=item_prefix + e.field,
                )
            )
            if kind and name:
                rejected.add((kind, ns, name))
    return LoadResult(tuple(objects), tuple(errors), frozenset(rejected))


def _identity(doc: dict) -> tuple[str, str, str]:
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    kind = _text(doc.get("kind"), "")
    name = _text(meta.get("name"), "")
    ns = _text(meta.get("namespace"), "default")
    return kind, ("" if kind == "Node" else ns), name


def _text(value: object, default: str) -> str:
    return value if isinstance(value, str) else default


def load_file(path: str | Path) -> LoadResult:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return LoadResult((), (ManifestError(str(path), 0, f"cannot read: {e}"),))
    return parse_manifests(text, str(path))


def manifest_files(path: str | Path, errors: list[OSError] | None = None) -> list[Path]:
    """The manifest files under PATH (a file, or a directory searched recursively), sorted.

    Names starting with a dot are skipped, directories too: a ConfigMap volume keeps its
    real files under `..<timestamp>/` and exposes them through symlinks. Directories that
    cannot be listed are skipped; ERRORS, when given, collects why (`.filename` says which).
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    found: list[Path] = []
    onerror = errors.append if errors is not None else None
    for root, dirs, files in os.walk(path, onerror=onerror, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(root, f) for f in files if f.endswith(MANIFEST_SUFFIXES) and not f.startswith(".")
        )
    return sorted(found)


def load_path(path: str | Path) -> LoadResult:
    """Every manifest under PATH; objects defined twice are reported, the first one kept."""
    objects: dict[tuple[str, str, str], KubeObject] = {}
    errors: list[ManifestError] = []
    rejected: set[tuple[str, str, str]] = set()
    if not Path(path).exists():
        return LoadResult((), (ManifestError(str(path), 0, "no such file or directory"),))
    for f in manifest_files(path):
        result = load_file(f)
        errors.extend(result.errors)
        rejected |= result.rejected_keys
        for obj in result.objects:
            if obj.key in objects:
                errors.append(
                    ManifestError(
                        str(f),
                        0,
                        "defined more than once; the first definition is used",
                        kind=obj.key[0],
                        name="/".join(k for k in obj.key[1:] if k),
                    )
                )
                continue
            objects[obj.key] = obj
    return LoadResult(tuple(objects.values()), tuple(errors), frozenset(rejected))
