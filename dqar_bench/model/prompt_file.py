"""Prompt files: a suite's captions as text, one prompt a line.

A prompt file keeps a text-to-image comparison's prompts out of the suite and lets several
suites share them (`prompts: {file: ../prompts/dqar-prompts-32.txt, count: 8}`). Lines are
UTF-8; blank lines and lines that start with `#` (comments) are skipped, and each prompt is
stripped of surrounding whitespace. The order is kept: `count` takes the first prompts, and
prompt i is caption i of every sampling call.
"""

from __future__ import annotations

from pathlib import Path


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a prompt file; ValueError with a one-line reason when there are none to read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; give a text file with one prompt a line")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte at offset {exc.start}); save it as UTF-8") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts (only blank lines and '#' comments); write one prompt a line")
    return prompts
