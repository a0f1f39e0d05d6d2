"""YAML from elsewhere (configs, --set values, search spaces) loaded with bounded work and memory.

``yaml.safe_load`` already refuses tags that build Python objects, but it happily builds a
"billion laughs" document: nine nested lists of nine aliases each is a few hundred bytes of
YAML, a handful of shared Python lists in memory, and 9^9 values the moment anything walks it
(printing it in an error, deep-copying the config, writing it back to config.yaml). So the
node graph is measured before anything is built: a document whose values, counted with every
alias expanded, exceed ``MAX_VALUES`` is refused, as are recursive aliases, nesting deeper than
``MAX_DEPTH`` and files larger than ``MAX_BYTES``. A segkit config has a few hundred values.
"""

from __future__ import annotations

import yaml
from yaml.nodes import MappingNode, SequenceNode

MAX_VALUES = 100_000  # scalars + collections, with aliases expanded
MAX_DEPTH = 100  # nested collections
MAX_BYTES = 8 * 2**20  # a config or search space is a few kilobytes


class YamlRefused(yaml.MarkedYAMLError):
    """A well-formed document refused for its size; a YAMLError, so callers' handlers catch it."""

    def __init__(self, problem: str):
        super().__init__(problem=problem)

    def __str__(self) -> str:
        return self.problem


def expanded_size(node, limit: int = MAX_VALUES) -> int:
    """Values in the node graph with every alias expanded, counted without expanding anything
    (each shared node's size is computed once); stops early past ``limit``."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    # iterative post-order walk: a deep document cannot exhaust Python's stack here
    stack = [(node, 0, False)]
    while stack:
        current, depth, children_done = stack.pop()
        key = id(current)
        if key in sizes:
            continue
        children = _children(current)
        if children_done:
            visiting.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        if key in visiting:
            raise YamlRefused("recursive alias (a value that contains itself)")
        if depth > MAX_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels")
        visiting.add(key)
        stack.append((current, depth, True))
        for child in children:
            if id(child) in visiting:
                raise YamlRefused("recursive alias (a value that contains itself)")
            stack.append((child, depth + 1, False))
    return sizes[id(node)]


def _children(node) -> list:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def safe_load(text: str):
    """``yaml.safe_load(text)`` after checking the document's size with aliases expanded.

    Raises a ``yaml.YAMLError`` (syntax, or :class:`YamlRefused` for a document too large once
    expanded, recursive or nested too deep) whose text is one bounded line.
    """
    if len(text) > MAX_BYTES:
        raise YamlRefused(f"{len(text)} characters; a YAML document of at most {MAX_BYTES // 2**20} MB is read")
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels") from None
        if node is None:
            return None
        size = expanded_size(node)
        if size > MAX_VALUES:
            raise YamlRefused(f"more than {MAX_VALUES} values once its aliases are expanded (an alias bomb?); "
                              "refused")
        return loader.construct_document(node)
    finally:
        loader.dispose()
