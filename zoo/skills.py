"""Reading a skill: a Markdown file beside the spec or config that names it, or inline text.

A plain string is a file path when it is one line ending in .md, .markdown or .txt, or one
word with a path separator (so `../../etc/passwd` is a path, and an error, never text); it is
inline text otherwise; `{file: ...}` and `{text: ...}` say it explicitly. Files must stay
inside the workspace, so a spec cannot pull in arbitrary files from the machine.
"""

from __future__ import annotations

from pathlib import Path

from registry import ConfigError, SkillSource

SKILL_FILE_SUFFIXES = (".md", ".markdown", ".txt")


def read_skill(ref: str | SkillSource, relative_to: Path, workspace_root: Path, where: str) -> str:
    """The skill text `ref` stands for; `where` names the file and key for error messages."""
    if isinstance(ref, SkillSource):
        return ref.text if ref.text is not None else _read_file(ref.file or "", relative_to, workspace_root, where)
    if _looks_like_path(ref):
        return _read_file(ref.strip(), relative_to, workspace_root, where)
    return ref


def _looks_like_path(ref: str) -> bool:
    """One line ending in a skill suffix, or one word with a path separator (`../x`, `skills/a`).

    Such a value is never taken as inline text: a path that is not a file is an error.
    """
    text = ref.strip()
    if "\n" in text:
        return False
    one_word_path = not any(char.isspace() for char in text) and ("/" in text or "\\" in text)
    return one_word_path or text.lower().endswith(SKILL_FILE_SUFFIXES)


def _read_file(name: str, relative_to: Path, workspace_root: Path, where: str) -> str:
    path = (relative_to / name).resolve()
    root = workspace_root.resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{where}: skill file {name!r} resolves to {path}, outside the workspace {root}")
    if not path.is_file():
        raise ConfigError(f"{where}: skill file {name!r} does not exist (looked for {path})")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read skill file {path}: {exc}") from None
