"""The program library: the directory of session programs a room offers (configs/programs/).

Each program is one file ``<id>.yaml``. Files are read afresh on every call, so an edit
in the library shows at once, and the sha256 given for a program is of the bytes that
were parsed (the record of a session names exactly what ran). A file that cannot be
read is reported in ``problems`` and left out; it never hides the other programs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicehub.models.config import HubConfig
from devicehub.models.limits import Limits
from devicehub.models.loading import Problem, ProgramError
from devicehub.models.program import SLUG_PATTERN, Program
from devicehub.validation import analyse, parse_program

SUFFIXES = (".yaml", ".yml")


class UnknownProgram(KeyError):
    """No program with this id in the library."""

    def __str__(self) -> str:
        return f"no program {self.args[0]!r} in the library"


@dataclass
class LibraryEntry:
    """One readable program of the library, as the ``programs`` verb lists it."""

    id: str
    version: int
    title: str
    sha256: str
    path: Path
    steps: int
    est_duration_s: float
    preflight: list[str]
    soft_limits: list[str]
    #: messages of error and hard findings (the program cannot start in this room as it is)
    blocking: list[str] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        """The entry of the MQTT ``programs`` reply."""
        return {
            "program": self.id, "version": self.version, "title": self.title, "sha256": self.sha256,
            "steps": self.steps, "est_duration_s": round(self.est_duration_s, 1),
            "preflight": self.preflight, "soft_limits": self.soft_limits,
        }


@dataclass
class LibraryProblem:
    """A library file that could not be used, and why."""

    path: Path
    problems: list[Problem]

    def lines(self) -> list[str]:
        return [p.format(str(self.path)) for p in self.problems]


class ProgramLibrary:
    """Programs in ``directory``; ``config`` and ``limits`` give each entry its duration and
    soft-limit ids (without them the entry's soft limits are left empty)."""

    def __init__(self, directory: str | Path, *, config: HubConfig | None = None,
                 limits: Limits | None = None) -> None:
        self.directory = Path(directory)
        self.config = config
        self.limits = limits
        #: unreadable files found by the last ``list()``
        self.problems: list[LibraryProblem] = []
        #: path -> ((inode, mtime_ns, size), (program, sha256, raw)) of files already parsed
        self._parsed: dict[Path, tuple[tuple[int, int, int], tuple[Program, str, bytes]]] = {}

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.suffix in SUFFIXES and p.is_file())
        except OSError as exc:
            self.problems.append(LibraryProblem(self.directory, [Problem("", f"cannot read the library: {exc.strerror or exc}")]))
            return []

    def list(self, *, config: HubConfig | None = None, limits: Limits | None = None) -> list[LibraryEntry]:
        """Every readable program, sorted by id; unreadable files go to ``problems``.

        ``config`` and ``limits`` given here win over the library's own for this call."""
        config = config if config is not None else self.config
        limits = limits if limits is not None else self.limits
        self.problems = []
        entries: list[LibraryEntry] = []
        seen: dict[str, Path] = {}
        for path in self._files():
            try:
                raw = path.read_bytes()
                program = parse_program(raw, str(path))
            except ProgramError as exc:
                self.problems.append(LibraryProblem(path, exc.problems))
                continue
            except OSError as exc:
                self.problems.append(LibraryProblem(path, [Problem("", f"cannot read: {exc.strerror or exc}")]))
                continue
            if program.id != path.stem:
                self.problems.append(LibraryProblem(path, [Problem("id", f"{program.id!r} does not match the file name {path.name!r}")]))
                continue
            if program.id in seen:
                self.problems.append(LibraryProblem(path, [Problem("id", f"{program.id!r} is also {seen[program.id].name}")]))
                continue
            seen[program.id] = path
            entries.append(self._entry(program, raw, path, config, limits))
        return sorted(entries, key=lambda e: e.id)

    def _entry(self, program: Program, raw: bytes, path: Path, config: HubConfig | None,
               limits: Limits | None) -> LibraryEntry:
        est: float = 0.0
        soft: list[str] = []
        blocking: list[str] = []
        if limits is not None:
            analysis = analyse(program, config, limits)
            est, soft = analysis.est_duration_s, analysis.soft_limit_ids
            blocking = [f.message for f in analysis.errors + analysis.hard]
        return LibraryEntry(
            id=program.id, version=program.version, title=program.title,
            sha256=hashlib.sha256(raw).hexdigest(), path=path, steps=len(program.steps),
            est_duration_s=est, preflight=[i.id for i in program.preflight], soft_limits=soft,
            blocking=blocking,
        )

    def path_of(self, program_id: str) -> Path:
        """The file of a program id; UnknownProgram when there is none (or the id is not a slug)."""
        if not isinstance(program_id, str) or not re.fullmatch(SLUG_PATTERN, program_id):
            raise UnknownProgram(program_id)
        found = [self.directory / f"{program_id}{s}" for s in SUFFIXES if (self.directory / f"{program_id}{s}").is_file()]
        if not found:
            raise UnknownProgram(program_id)
        return found[0]

    def get(self, program_id: str) -> tuple[Program, str, bytes]:
        """(program, sha256 of the file's bytes, the bytes), read once so all three agree.

        UnknownProgram when no file has that id; ProgramError when the file is bad.
        """
        path = self.path_of(program_id)
        try:
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._parsed.get(path)
            if cached is not None and cached[0] == key:
                return cached[1]  # unchanged file: no re-parse on every start (ms of YAML on the loop)
            raw = path.read_bytes()
        except OSError as exc:
            raise ProgramError([Problem("", f"cannot read: {exc.strerror or exc}")], source=str(path)) from None
        program = parse_program(raw, str(path))
        if program.id != program_id:
            raise ProgramError([Problem("id", f"{program.id!r} does not match the file name {path.name!r}")], source=str(path))
        result = (program, hashlib.sha256(raw).hexdigest(), raw)
        self._parsed[path] = (key, result)
        return result
