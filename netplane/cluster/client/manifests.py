"""`-f FILE|DIR|-`: the documents to send, read with the object model's loader, and errors
that name the file and document as kubectl's do."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from netplane.model import Document, documents, manifest_files


def read(path: str, verb: str = "apply") -> list[Document]:
    """Every document under PATH ("-" is stdin); a file that cannot be used is an error."""
    texts: list[tuple[str, str]] = []
    if path == "-":
        texts.append(("STDIN", sys.stdin.read()))
    else:
        if not Path(path).exists():
            raise click.ClickException(f'the path "{path}" does not exist')
        for f in manifest_files(path):
            try:
                texts.append((str(f), f.read_bytes().decode("utf-8")))
            except UnicodeDecodeError as e:
                raise click.ClickException(
                    f"error parsing {f}: not a YAML or JSON manifest (byte {e.start} is not "
                    "UTF-8 text)"
                ) from None
            except OSError as e:
                raise click.ClickException(f"error reading {f}: {e.strerror}") from None
    docs: list[Document] = []
    for source, text in texts:
        if "\0" in text:
            raise click.ClickException(f"error parsing {source}: not a YAML or JSON manifest "
                                       "(it contains NUL bytes)")  # fmt: skip
        found, errors = documents(text, source)
        if errors:
            raise click.ClickException(f"error parsing {errors[0]}")
        for d in found:
            if not isinstance(d.body, dict):
                where = f"{source}: document {d.number}" + (f" {d.field}" if d.field else "")
                raise click.ClickException(f"error validating {where}: not a Kubernetes object")
            if not d.body.get("apiVersion") or not d.body.get("kind"):
                what = "apiVersion" if not d.body.get("apiVersion") else "kind"
                raise click.ClickException(
                    f'error validating "{source}": error validating data: {what} not set'
                )
        docs += found
    if not docs:
        raise click.ClickException(f"no objects passed to {verb}")
    return docs
