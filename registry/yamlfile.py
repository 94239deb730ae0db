"""YAML files validated into pydantic models, with errors that point at file:line:column.

Configuration and zoo specs are written by hand, so a mistake must be reported where it
is: the file, the line and column, the dotted key, and what was expected (for an unknown
key: the keys that are allowed, and the closest one when it looks like a typo).
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from registry.errors import ConfigError, expected

Loc = tuple[str | int, ...]
ALIAS_EXPANSION_BUDGET = 10_000
M = TypeVar("M", bound=BaseModel)


FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader, when PyYAML was built with it: it parses several times faster than the
pure-Python one, which matters to every command that reads the config before it answers."""


def read_yaml(path: Path) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    """Parse one YAML document; return its data and the 1-based (line, column) of every key.

    Malformed YAML and duplicate keys raise `ConfigError` naming the position. A document
    libyaml rejects is parsed again by the pure-Python loader, whose messages say more (the
    name of an undefined alias, the token that was expected).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return _parse(path, text, FAST_LOADER)
    except yaml.YAMLError:
        pass
    try:
        return _parse(path, text, yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _parse(path: Path, text: str, loader_class: type) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    """The data and key positions of `text`, read with `loader_class`; YAML errors propagate."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_expansion(path, node)
        marks: dict[Loc, tuple[int, int]] = {}
        _collect_marks(path, node, (), marks)
        return loader.construct_document(node), marks
    finally:
        loader.dispose()


def _check_expansion(path: Path, root: yaml.Node) -> None:
    """Refuse aliases that expand the document far beyond what is written ("billion laughs").

    An alias shares its anchor's node, so the parsed graph stays small, but everything that
    walks the data (validation, our own key positions) visits each use. Counting the
    expanded size once per distinct node keeps this check linear in the file.
    """
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in open_nodes:
            mark = node.start_mark
            raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML: an alias refers to a node that contains it")
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        expanded[key] = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        return expanded[key]

    total = size(root)
    if total - len(expanded) > ALIAS_EXPANSION_BUDGET:
        raise ConfigError(
            f"{path}: invalid YAML: its aliases expand it to {total:,} nodes from {len(expanded):,} written; "
            f"at most {ALIAS_EXPANSION_BUDGET:,} nodes may come from aliases"
        )


def _collect_marks(path: Path, node: yaml.Node, loc: Loc, marks: dict[Loc, tuple[int, int]]) -> None:
    """Record the position of every mapping key and sequence item below `node`."""
    marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                mark = key_node.start_mark
                raise ConfigError(
                    f"{path}:{mark.line + 1}:{mark.column + 1}: duplicate key {_dotted(loc + (key,))!r}"
                )
            seen.add(key)
            _collect_marks(path, value_node, loc + (key,), marks)
            marks[loc + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_marks(path, item, loc + (index,), marks)


def load_model(path: Path, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Read `path` and validate it as `model`; every problem is reported with its position."""
    data, marks = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc, model, marks)) from None


def describe_validation_error(
    path: Path, exc: ValidationError, model: type[BaseModel], marks: dict[Loc, tuple[int, int]]
) -> str:
    """One line per problem: `file:line:col: key.path: what was expected`."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = _data_path(tuple(part for part in error["loc"] if not _is_internal_tag(part)), marks)
        where = _position(path, loc, marks)
        if error["type"] == "extra_forbidden":
            message = _unknown_key_message(model, loc)
        elif error["type"] == "missing":
            message = "required key is missing"
        else:
            message = expected(error, given=True)
        lines.append(f"{where}: {_dotted(loc) or '(top level)'}: {message}")
    return "\n".join(lines)


def _data_path(loc: Loc, marks: dict[Loc, tuple[int, int]]) -> Loc:
    """`loc` without the union tags pydantic inserts (parts that are not keys in the file);
    the last part is kept even when absent, since it may name a missing key."""
    kept: Loc = ()
    for index, part in enumerate(loc):
        if (kept + (part,)) in marks or index == len(loc) - 1:
            kept += (part,)
    return kept


def _position(path: Path, loc: Loc, marks: dict[Loc, tuple[int, int]]) -> str:
    """`file:line:col` of the deepest part of `loc` present in the file."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in marks:
            line, column = marks[loc[:end]]
            return f"{path}:{line}:{column}"
    return str(path)


def _unknown_key_message(model: type[BaseModel], loc: Loc) -> str:
    """Name the unknown key, the allowed keys, and the closest allowed key."""
    allowed = _allowed_keys(model, loc[:-1])
    key = str(loc[-1]) if loc else ""
    message = "unknown key"
    if allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        message += f"; allowed keys: {', '.join(sorted(allowed))}"
    return message


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The field names of the model found by following `loc` down from `model`."""
    annotation: Any = model
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    target = _model_in(annotation)
    if target is None:
        return []
    return [field.alias or name for name, field in target.model_fields.items()]


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation one level below `annotation` along key or index `part`."""
    target = _model_in(annotation)
    if target is not None and isinstance(part, str):
        field = target.model_fields.get(part)
        return field.annotation if field else None
    for arg in _unwrap(annotation):
        origin = typing.get_origin(arg)
        if origin is dict:
            return typing.get_args(arg)[1]
        if origin is list and isinstance(part, int):
            return typing.get_args(arg)[0]
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `Model | None`, if any."""
    for arg in _unwrap(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _unwrap(annotation: Any) -> list[Any]:
    """The members of a union (or the annotation itself)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _is_internal_tag(part: str | int) -> bool:
    """pydantic inserts tags such as `function-after[...]` into error locations."""
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _dotted(loc: Loc) -> str:
    """`overrides.stop[1]` from ('overrides', 'stop', 1)."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
