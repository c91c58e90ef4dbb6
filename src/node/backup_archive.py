"""The backup archive: one uncompressed tar file, its manifest, and the rules for reading it back.

Owns the file format of ``citynode backup`` (written here, read back by ``citynode restore``).
An archive holds regular files only, under three names of a fixed shape, plus ``manifest.json``::

    database/citynode.sqlite3                 SQLite snapshot (VACUUM INTO), or
    database/citynode.pgdump                  PostgreSQL custom-format dump (pg_dump)
    keys/<key file>                           the keystore, still sealed under the operator secret
    attachments/(in|out)/<city>/<32 hex>      encrypted attachment streams
    manifest.json                             format, version, city, time, schema, key log, files

Invariants:

* Member names are checked against that whitelist (a regular expression per area) before anything
  is read: no absolute path, no ``..``, no empty or dotted component, no link, directory, device,
  FIFO or sparse member (a few bytes of archive that expand to any size), no name twice. A
  member that breaks a rule refuses the whole archive (:class:`UnsafeMember`), so nothing
  outside the target is ever written, whatever the archive, and nothing larger than it.
* The manifest names every other member with its size and SHA-256, and nothing else: a member
  missing, extra, of another size or (found while extracting) another hash refuses the archive
  (:class:`BackupTampered`). The hashes detect damage, not a forger: the archive is not signed
  (``backup`` needs no secret). The key files are sealed and bound to their names by the keystore,
  so a forged key file still fails to open; keep archives where only operators can write.
* The archive file is written ``0600`` under a temporary name in the target's folder, fsynced and
  hard-linked to its name only when complete: an existing file is never overwritten and a failed
  backup leaves no partial archive under the name.
* Memory is flat: file contents are streamed in and out, and hashed as they pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, ClassVar, Final

import msgspec

from node.errors import NodeError
from node.private_files import TEMP_PREFIX, fsync_dir

FORMAT_NAME: Final = "citynode-backup"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "manifest.json"
SQLITE_MEMBER: Final = "database/citynode.sqlite3"
PGDUMP_MEMBER: Final = "database/citynode.pgdump"
MAX_MANIFEST_BYTES: Final = 64 * 1024 * 1024
MAX_MEMBERS: Final = 1_000_000
COPY_CHUNK_BYTES: Final = 1024 * 1024
_MEMBER_NAME: Final = re.compile(
    r"database/citynode\.(?:sqlite3|pgdump)"
    r"|keys/[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
    r"|attachments/(?:in|out)/[a-z][a-z0-9-]{0,63}/[0-9a-f]{32}"
)
_SHA256_HEX: Final = r"^[0-9a-f]{64}$"
_PLAIN_FILE_TYPES: Final = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE})


# --- errors -------------------------------------------------------------------------------------


class BackupError(NodeError):
    """A backup cannot be written or read back."""

    code: ClassVar[str] = "backup_error"


class BackupExists(BackupError):
    """``--out`` names a file that exists: a backup never overwrites one."""

    code: ClassVar[str] = "backup_exists"


class BackupUnreadable(BackupError):
    """The file is not a backup archive: not a tar, no manifest, or a malformed manifest."""

    code: ClassVar[str] = "backup_unreadable"


class UnknownBackupFormat(BackupError):
    """The manifest names a format or version this citynode does not know."""

    code: ClassVar[str] = "backup_unknown_format"


class UnsafeMember(BackupError):
    """A member would land outside its place: absolute, ``..``, a link, a device, a duplicate."""

    code: ClassVar[str] = "backup_unsafe_member"


class BackupTampered(BackupError):
    """A member is missing, extra, or differs in size or SHA-256 from the manifest."""

    code: ClassVar[str] = "backup_tampered"


# --- the manifest -------------------------------------------------------------------------------

_Sha256 = Annotated[str, msgspec.Meta(pattern=_SHA256_HEX)]
_Size = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One member of the archive: its name, size in bytes and SHA-256 (hex)."""

    path: str
    size: _Size
    sha256: _Sha256


class DatabaseInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The database in the archive: ``sqlite`` or ``postgresql``, and its Alembic revision."""

    backend: str
    schema_revision: str
    member: str


class KeyLogState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The key-history log as the snapshot holds it: entry count and head hash (hex)."""

    size: _Size
    head: _Sha256


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What ``manifest.json`` states about the archive (format version :data:`FORMAT_VERSION`)."""

    format: str
    version: int
    city: str
    taken_at: _Size
    taken_at_iso: str
    database: DatabaseInfo
    key_log: KeyLogState
    files: tuple[FileEntry, ...]


class _Versioned(msgspec.Struct, frozen=True):
    """The two fields read before the rest, so a newer format is told apart from a broken one."""

    format: str = ""
    version: int = 0


def parse_manifest(data: bytes) -> Manifest:
    """Parse ``manifest.json``, format and version first.

    Raises:
        UnknownBackupFormat: another format, or a version this code does not know.
        BackupUnreadable: not JSON, or a field missing, unknown or of the wrong type.
    """
    try:
        versioned = msgspec.json.decode(data, type=_Versioned)
    except msgspec.DecodeError as e:
        raise BackupUnreadable("the archive's manifest.json is not a backup manifest") from e
    if versioned.format != FORMAT_NAME or versioned.version != FORMAT_VERSION:
        raise UnknownBackupFormat(
            f"the archive is of format {versioned.format!r} version {versioned.version}; this "
            f"citynode reads {FORMAT_NAME!r} version {FORMAT_VERSION} only"
        )
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as e:
        raise BackupUnreadable(f"the archive's manifest.json is malformed: {e}") from e
    for entry in manifest.files:
        check_member_name(entry.path)
    return manifest


def is_member_name(name: str) -> bool:
    """Return whether an archive may hold a member of that name (see the module docstring)."""
    return _MEMBER_NAME.fullmatch(name) is not None


def check_member_name(name: str) -> None:
    """Refuse a member name outside the archive's whitelist (see the module docstring).

    Raises:
        UnsafeMember: the name is not one an archive may hold.
    """
    if not is_member_name(name):
        shown = name[:120].encode("ascii", "backslashreplace").decode()
        raise UnsafeMember(f"the archive holds a member named {shown!r}, which is not allowed")


# --- writing ------------------------------------------------------------------------------------


class _HashingReader:
    """A file object that hashes what ``tarfile`` reads from it."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self.digest.update(chunk)
        return chunk


class ArchiveWriter:
    """An archive being written: files added one by one, the manifest last, then published.

    Use :func:`write_archive`; ``add_*`` record each member's size and hash for the manifest.
    """

    def __init__(self, tar: tarfile.TarFile, mtime: int) -> None:
        self._tar = tar
        self._mtime = mtime
        self.entries: list[FileEntry] = []

    def add_file(self, name: str, source: Path) -> None:
        """Add a regular file (opened without following a link), streamed and hashed.

        Raises:
            FileNotFoundError: the file is gone.
            BackupError: the file is a link or not a regular file, or it changed size meanwhile.
        """
        check_member_name(name)
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise  # removed since it was listed (a shredded case's stream): the caller skips it
        except OSError as e:
            raise BackupError(f"cannot read {source} ({e.strerror})") from e
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BackupError(f"{source} is not a regular file")
            reader = _HashingReader(f)
            try:
                self._tar.addfile(self._member(name, info.st_size), reader)
            except OSError as e:  # tarfile: "unexpected end of data" when the file shrank
                raise BackupError(f"{source} changed while it was being copied") from e
        self.entries.append(FileEntry(name, info.st_size, reader.digest.hexdigest()))

    def add_bytes(self, name: str, data: bytes) -> None:
        """Add a member from memory (a key file, read by the keystore's rules)."""
        check_member_name(name)
        reader = _HashingReader(io.BytesIO(data))
        self._tar.addfile(self._member(name, len(data)), reader)
        self.entries.append(FileEntry(name, len(data), reader.digest.hexdigest()))

    def add_manifest(self, manifest: Manifest) -> None:
        """Add ``manifest.json`` (the last member)."""
        data = msgspec.json.format(msgspec.json.encode(manifest), indent=2)
        self._tar.addfile(self._member(MANIFEST_NAME, len(data)), io.BytesIO(data))

    def _member(self, name: str, size: int) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.size = size
        member.mode = 0o600
        member.mtime = self._mtime
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member


@contextlib.contextmanager
def write_archive(out: Path, mtime: int) -> Iterator[ArchiveWriter]:
    """Write an archive to ``out``: visible under that name only when the block ends cleanly.

    Raises:
        BackupExists: ``out`` exists (checked first, and again when publishing).
        BackupError: the folder of ``out`` cannot be written.
    """
    if out.exists() or out.is_symlink():
        raise BackupExists(f"{out} exists; a backup never overwrites a file")
    try:
        fd, temp = tempfile.mkstemp(dir=out.parent, prefix=TEMP_PREFIX)  # 0600
    except OSError as e:
        raise BackupError(f"cannot write in {out.parent} ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                yield ArchiveWriter(tar, mtime)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, out)  # atomic, and never over an existing name
        except FileExistsError:
            raise BackupExists(f"{out} exists; a backup never overwrites a file") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_dir(out.parent)


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedArchive:
    """An archive whose members all passed the name and type rules and match the manifest's list.

    The hashes are checked by :meth:`extract_to`, as the contents stream out.
    """

    tar: tarfile.TarFile
    manifest: Manifest
    members: dict[str, tarfile.TarInfo]

    def extract_to(self, name: str, target: Path) -> None:
        """Write member ``name`` to a new ``0600`` file ``target``, checking its SHA-256.

        Raises:
            BackupTampered: its content does not hash to the manifest's value.
            FileExistsError: ``target`` exists.
        """
        entry = next(e for e in self.manifest.files if e.path == name)
        source = self.tar.extractfile(self.members[name])
        if source is None:  # pragma: no cover - only regular members are kept
            raise UnsafeMember(f"{name} is not a regular file")
        digest = hashlib.sha256()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, source:
            while chunk := source.read(COPY_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != entry.sha256:
            raise BackupTampered(
                f"{name} in the archive does not match its SHA-256 in the manifest"
            )


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[CheckedArchive]:
    """Open a backup archive and check every member's name and type against the manifest.

    Raises:
        BackupUnreadable: not an uncompressed tar file, or no manifest.
        UnsafeMember: a member is a link, directory or device, or its name is not allowed.
        UnknownBackupFormat: the manifest's format or version is unknown.
        BackupTampered: the members and the manifest's list of files differ.
    """
    if not path.is_file():
        raise BackupUnreadable(f"{path} is not a file")
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 (closed below, after the caller)
    except (tarfile.TarError, OSError) as e:
        raise BackupUnreadable(f"{path} is not a backup archive (an uncompressed tar file)") from e
    try:
        members = _checked_members(tar)
        if MANIFEST_NAME not in members:
            raise BackupUnreadable(f"{path} holds no {MANIFEST_NAME}: not a citynode backup")
        manifest = parse_manifest(_read_manifest(tar, members.pop(MANIFEST_NAME)))
        _check_listing(manifest, members)
        yield CheckedArchive(tar, manifest, members)
    finally:
        tar.close()


def _checked_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    try:
        for count, member in enumerate(tar, start=1):
            if count > MAX_MEMBERS:
                raise BackupUnreadable(f"the archive holds more than {MAX_MEMBERS} members")
            if member.name != MANIFEST_NAME:
                check_member_name(member.name)
            # A sparse member is "regular" to tarfile, yet a few bytes of it expand to any size.
            if member.type not in _PLAIN_FILE_TYPES or member.issparse():
                raise UnsafeMember(
                    f"the archive's member {member.name} is not a plain regular file (a link, "
                    "directory, device or sparse file): refused"
                )
            if member.name in members:
                raise UnsafeMember(f"the archive holds {member.name} twice")
            members[member.name] = member
    except tarfile.TarError as e:
        raise BackupUnreadable("the archive is damaged or truncated") from e
    return members


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_MANIFEST_BYTES:
        raise BackupUnreadable(f"the archive's {MANIFEST_NAME} is larger than any manifest")
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - only regular members are kept
        raise BackupUnreadable(f"the archive's {MANIFEST_NAME} cannot be read")
    with source:
        return source.read(MAX_MANIFEST_BYTES + 1)


def _check_listing(manifest: Manifest, members: dict[str, tarfile.TarInfo]) -> None:
    listed = {e.path: e for e in manifest.files}
    if len(listed) != len(manifest.files):
        raise BackupTampered("the manifest lists a file twice")
    missing = sorted(listed.keys() - members.keys())
    extra = sorted(members.keys() - listed.keys())
    if missing or extra:
        raise BackupTampered(
            f"the archive and its manifest differ: {len(missing)} listed file(s) missing "
            f"{missing[:3]}, {len(extra)} unlisted member(s) {extra[:3]}"
        )
    for name, entry in listed.items():
        if members[name].size != entry.size:
            raise BackupTampered(
                f"{name} in the archive is {members[name].size} bytes; the manifest says "
                f"{entry.size}"
            )
