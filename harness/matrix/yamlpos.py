"""YAML loading that keeps the line number of every key and value.

``yaml.safe_load`` throws positions away, so an error found while validating the
matrix could only say *what* is wrong, not *where*.  Here the document is
composed into PyYAML nodes (which carry marks) and turned into a small tree of
``YMap``/``YSeq``/``YScalar`` that keeps a 1-based line for each node and for
each mapping key.  Two things PyYAML accepts silently are refused on the way:
duplicate keys (the later one would win without a word) and recursive aliases.
Merge keys (``<<: *anchor``) are honoured, with explicit keys taking precedence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import MatrixError

log = logging.getLogger(__name__)

Scalar = Union[str, int, float, bool, None]

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Tags whose Python value would be surprising here; they are kept as text.
_TEXT_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"}


@dataclass(frozen=True)
class YScalar:
    """A scalar with its Python value (as YAML 1.1 resolves it) and source text."""

    value: Scalar
    text: str
    line: int


@dataclass(frozen=True)
class YEntry:
    """One ``key: value`` pair of a mapping; ``key_line`` is where the key is."""

    key: str
    key_line: int
    value: "YNode"


@dataclass(frozen=True)
class YMap:
    """A mapping in source order.  Keys are always the key's source text."""

    entries: dict[str, YEntry]
    line: int


@dataclass(frozen=True)
class YSeq:
    items: tuple["YNode", ...]
    line: int


YNode = Union[YScalar, YMap, YSeq]


def join_key(path: str, key: str) -> str:
    """``targets`` + ``x`` -> ``targets.x`` (the dotted path used in errors)."""
    return f"{path}.{key}" if path else key


def join_index(path: str, index: int) -> str:
    """``tiers.smoke.cells`` + 0 -> ``tiers.smoke.cells[0]``."""
    return f"{path}[{index}]"


def describe(node: YNode) -> str:
    """How a node reads in an error message: ``'lots'``, ``a mapping``, ``a list``."""
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    if node.value is None:
        return "nothing (null)"
    return repr(node.text)


def load_yaml(path: str | Path) -> YNode | None:
    """Read and compose one YAML file; ``None`` for an empty document."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MatrixError(f"cannot read matrix file {name}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MatrixError("file is not valid UTF-8", name, line) from None
    return parse_yaml(text, name)


def parse_yaml(text: str, file: str) -> YNode | None:
    """Compose ``text`` (named ``file`` in errors) into a positioned tree."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, file) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise MatrixError(f"invalid YAML: unacceptable character {exc.character!r}",
                          file, line) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error has a mark
        raise MatrixError(f"invalid YAML: {exc}", file, 1) from None
    if root is None:
        return None
    return _Converter(file).convert(root, "")


def _syntax_error(exc: yaml.MarkedYAMLError, file: str) -> MatrixError:
    """PyYAML notices some mistakes lines later (an unclosed ``[`` at the next
    ``key:``); the line where the construct started is added to the reason."""
    mark = exc.problem_mark or exc.context_mark
    context = exc.context or ""
    if context and exc.context_mark and mark and exc.context_mark.line != mark.line:
        context += f" started at line {exc.context_mark.line + 1}"
    parts = [p for p in (context, exc.problem) if p]
    reason = "invalid YAML: " + ", ".join(parts)
    return MatrixError(reason, file, mark.line + 1 if mark else 1)


class _Converter:
    """Turns PyYAML nodes into Y* nodes, checking keys on the way."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._scalars = SafeConstructor()
        self._active: set[int] = set()

    def convert(self, node: Node, path: str) -> YNode:
        line = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in self._active:
            raise MatrixError("recursive YAML alias", self.file, line, path)
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                items = tuple(self.convert(item, join_index(path, i))
                              for i, item in enumerate(node.value))
                return YSeq(items, line)
            assert isinstance(node, MappingNode)
            return self._mapping(node, path)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: ScalarNode) -> YScalar:
        line = node.start_mark.line + 1
        if node.tag in _TEXT_TAGS:
            return YScalar(node.value, node.value, line)
        try:
            value = self._scalars.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise _syntax_error(exc, self.file) from None
        return YScalar(value, node.value, line)

    def _mapping(self, node: MappingNode, path: str) -> YMap:
        entries: dict[str, YEntry] = {}
        merged: dict[str, YEntry] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                self._merge(value_node, path, merged)
                continue
            if not isinstance(key_node, ScalarNode):
                raise MatrixError("mapping keys must be plain names, not a "
                                  "list or mapping", self.file, key_line, path)
            key = key_node.value
            if key in entries:
                first = entries[key].key_line
                raise MatrixError(f"duplicate key (first defined at line {first})",
                                  self.file, key_line, join_key(path, key))
            value = self.convert(value_node, join_key(path, key))
            entries[key] = YEntry(key, key_line, value)
        for key, entry in merged.items():
            entries.setdefault(key, entry)
        return YMap(entries, node.start_mark.line + 1)

    def _merge(self, value: Node, path: str, merged: dict[str, YEntry]) -> None:
        """``<<: *a`` or ``<<: [*a, *b]``: earlier sources win, as YAML specifies."""
        sources = value.value if isinstance(value, SequenceNode) else [value]
        for source in sources:
            converted = self.convert(source, path)
            if not isinstance(converted, YMap):
                raise MatrixError("'<<' must merge a mapping or a list of mappings",
                                  self.file, converted.line, path)
            for key, entry in converted.entries.items():
                merged.setdefault(key, entry)
