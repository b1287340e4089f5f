"""A sweep spec file read without trusting it, and the one error a bad spec raises.

``load_spec_file`` refuses, with one line and in little memory, whatever is not a small YAML
mapping: a FIFO or a device, a huge file, text that is not UTF-8, aliases, deep nesting, keys
that are not text. ``SweepSpecError`` is what every part of a sweep's checking (this reader,
the axes of ``scheduler.axes``, the plan of ``scheduler.plan``) raises on bad input."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from polyfit_models.errors import BadInput


class SweepSpecError(BadInput, ValueError):
    """Raised when a sweep spec or an axis flag is malformed or out of range (one line)."""


#: A sweep spec is a small text file: anything bigger is refused unread.
MAX_SPEC_BYTES = 256 * 1024
#: Mappings and lists nested deeper than this are refused (a spec needs four levels).
MAX_SPEC_DEPTH = 16
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_spec_file(path: str | Path) -> dict:
    """The spec file at ``path`` as a mapping. Refused with one line (``SweepSpecError``),
    quickly and in little memory, whatever the file: not a regular file (a FIFO, a device such
    as /dev/zero, a folder), over ``MAX_SPEC_BYTES``, not UTF-8, not YAML, YAML aliases (which
    can expand a few hundred bytes into gigabytes), nesting deeper than ``MAX_SPEC_DEPTH``,
    keys that are not text."""
    shown = printable(str(path))
    raw = _read_small_regular_file(path, shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SweepSpecError(f"{shown}: not UTF-8 text (byte {e.start})") from None
    data = _parse_yaml(text, shown)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SweepSpecError(f"{shown}: a sweep spec must be a mapping, got {type(data).__name__}")
    return data


def _read_small_regular_file(path: str | Path, shown: str) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on the
        # open descriptor, so the file cannot be swapped between the check and the read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise SweepSpecError(f"cannot read {shown}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SweepSpecError(f"{shown}: not a regular file")
        if info.st_size > MAX_SPEC_BYTES:
            raise SweepSpecError(f"{shown}: {info.st_size:,} bytes, over the limit of "
                                 f"{MAX_SPEC_BYTES:,} for a sweep spec")
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES:
            chunk = os.read(fd, MAX_SPEC_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise SweepSpecError(f"cannot read {shown}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if size > MAX_SPEC_BYTES:
        raise SweepSpecError(f"{shown}: over the limit of {MAX_SPEC_BYTES:,} bytes for a spec")
    return b"".join(chunks)


def _parse_yaml(text: str, shown: str) -> object:
    """Parse, then check the node graph before building any Python object from it."""
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, shown)
        return loader.construct_document(node)
    except SweepSpecError:
        raise
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SweepSpecError(f"{shown}: not valid YAML{at}") from None
    except (RecursionError, MemoryError):
        raise SweepSpecError(f"{shown}: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. an int of 10,000 digits
        raise SweepSpecError(f"{shown}: a value YAML cannot read: "
                             f"{printable(str(e))[:80]}") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, shown: str) -> None:
    """Refuse aliases (a node reached twice), deep nesting and keys that are not text."""
    seen: set[int] = set()
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise SweepSpecError(f"{shown}: YAML aliases (*name) are not allowed in a sweep "
                                 f"spec (line {node.start_mark.line + 1})")
        seen.add(id(node))
        if depth > MAX_SPEC_DEPTH:
            raise SweepSpecError(f"{shown}: nested more than {MAX_SPEC_DEPTH} levels deep "
                                 f"(line {node.start_mark.line + 1})")
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not (isinstance(key, yaml.ScalarNode)
                        and key.tag == "tag:yaml.org,2002:str"):
                    raise SweepSpecError(f"{shown}: keys must be text (line "
                                         f"{key.start_mark.line + 1})")
                stack += [(key, depth + 1), (value, depth + 1)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, depth + 1) for item in node.value]


def printable(text: str) -> str:
    """``text`` for a one-line message: control and format characters shown escaped."""
    if all(c.isprintable() for c in text):
        return text
    return repr(text)[1:-1]


def check_name(name: object) -> str:
    """A sweep name: non-empty text of at most 200 printable characters (it is printed in
    progress lines and tables, and matched by every command that takes SWEEP)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise SweepSpecError("name: must be a non-empty string of at most 200 characters")
    if not name.isprintable():
        raise SweepSpecError(f"name: control characters are not allowed, got "
                             f"{printable(name)!r}")
    return name

