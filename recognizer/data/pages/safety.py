"""What an ALTO or PAGE file may make recognizer do: the trust rules for XML from a stranger.

An XML page is data. Reading one never runs code, never reads a file outside the folders the user
gave, and never loses or overwrites data:

- **Size**: a file over :data:`MAX_XML_BYTES` is refused before it is parsed.
- **Entities**: a DOCTYPE that declares an entity (general, parameter or unparsed) is refused, so
  nothing is expanded into a transcript (no "billion laughs") and no ``SYSTEM "file:///..."``
  entity pulls in another file. ElementTree never loads an external DTD, and a DOCTYPE is never
  copied into the XML that ``recognizer-transcribe`` writes.
- **Paths**: an image path read from the XML is used only when its real path (symlinks resolved)
  lies under an allowed folder (:func:`within`): the XML's folder or a folder of ``image_dirs``;
  ``allow_outside_images`` lifts this for files the user trusts.
- **Writing**: :func:`recognizer.files.write_atomic` writes a temporary file beside the target and renames it
  over the target, so a failure leaves the old file (or none), never half a file, and a symlink at the
  target is replaced, not written through.
"""

from __future__ import annotations

import stat
import xml.parsers.expat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from recognizer.data.base import DataError

__all__ = ["MAX_XML_BYTES", "XmlSource", "read_xml", "within"]

#: The largest XML page read, in bytes (a page's ALTO or PAGE XML is normally well under 5 MB).
MAX_XML_BYTES = 50_000_000


@dataclass(frozen=True)
class XmlSource:
    """An XML file's bytes, checked, and what comes before its root element.

    Attributes:
        path: the file.
        data: its bytes.
        declaration: ``(version, encoding, standalone)`` of the XML declaration (``standalone``: -1
            absent, 0 no, 1 yes), or None without one.
        prolog: the comments and processing instructions before the root element, as XML text (the
            DOCTYPE is not among them).
    """

    path: Path
    data: bytes
    declaration: tuple[str, str | None, int] | None
    prolog: tuple[str, ...]


class _RootReached(Exception):
    """Stops the prolog scan at the root element (entities can only be declared before it)."""


def read_xml(path: Path) -> XmlSource:
    """Read an XML page, refusing what a page never needs and a stranger could abuse.

    Raises:
        DataError: the file is missing or not a regular file, is larger than :data:`MAX_XML_BYTES`,
            or its DOCTYPE declares an entity (each message names the file and the fix).
    """
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file; give XML page files (or folders of them)")
        if info.st_size > MAX_XML_BYTES:
            raise DataError(_too_large(path, info.st_size))
        with path.open("rb") as f:
            data = f.read(MAX_XML_BYTES + 1)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) > MAX_XML_BYTES:  # grew since stat
        raise DataError(_too_large(path, len(data)))
    declaration, prolog = _scan_prolog(path, data)
    return XmlSource(path, data, declaration, prolog)


def _too_large(path: Path, size: int) -> str:
    return (
        f"{path}: {size / 1e6:.1f} MB is over the {MAX_XML_BYTES / 1e6:g} MB limit for one XML page "
        "(recognizer.data.pages.safety.MAX_XML_BYTES); an ALTO or PAGE page is normally well under 5 MB: "
        "check that this file is one page's XML, or split it into pages"
    )


def _scan_prolog(path: Path, data: bytes) -> tuple[tuple[str, str | None, int] | None, tuple[str, ...]]:
    """Parse up to the root element: refuse entity declarations, collect the declaration, comments and PIs."""
    parser = xml.parsers.expat.ParserCreate()
    declaration: list[tuple[str, str | None, int]] = []
    prolog: list[str] = []
    in_doctype = False

    def refuse(name: str, *_: object) -> None:
        raise DataError(
            f"{path}: its DOCTYPE declares the entity {name!r}; entities are refused (they can expand into huge "
            "text or pull in other files, and ALTO and PAGE never need them): re-export the file without a DOCTYPE, "
            "or delete the <!DOCTYPE ...> block"
        )

    def doctype(start: bool) -> None:
        nonlocal in_doctype
        in_doctype = start

    def comment(text: str) -> None:
        if not in_doctype:
            prolog.append(f"<!--{text}-->")

    def pi(target: str, body: str) -> None:
        if not in_doctype:
            prolog.append(f"<?{target} {body}?>" if body else f"<?{target}?>")

    def root(*_: object) -> None:
        raise _RootReached

    parser.XmlDeclHandler = lambda version, encoding, standalone: declaration.append((version, encoding, standalone))
    parser.StartDoctypeDeclHandler = lambda *_: doctype(True)
    parser.EndDoctypeDeclHandler = lambda: doctype(False)
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.CommentHandler = comment
    parser.ProcessingInstructionHandler = pi
    parser.StartElementHandler = root
    try:
        parser.Parse(data, True)
    except _RootReached:
        pass
    except xml.parsers.expat.ExpatError:
        pass  # malformed before the root: the real parse reports it with its position
    return (declaration[0] if declaration else None), tuple(prolog)


def within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path``'s real location (``..`` and every symlink resolved) lies under one of ``roots``
    (also resolved). A link inside a root that points elsewhere is outside: the file it reaches is what
    would be read."""
    real = path.resolve()
    return any(real.is_relative_to(root.resolve()) for root in roots)
