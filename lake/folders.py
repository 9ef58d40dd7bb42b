"""The lake's local folders: the writer touches its own files only, and follows no symbolic link.

In: a local lake's root folder. Out: the folder where this process writes its temporary files
(``<lake>/.tmp/writer-<32 hex digits>/``, with its lock file ``writer-<same digits>.lock`` locked while the process
lives; both removed when it exits, the folder if empty); :func:`clean_stale_temp_files`, which removes the temporary
files of writers that are gone (only ``<32 hex digits>.parquet`` files in folders whose lock it can take); and
one-line refusals (:class:`LakeFolderError`) of ``.tmp``, a dataset folder or a partition folder that is a symbolic
link (the lake's root may be one).

How the locks and links are handled, and why: docs/decisions/0004-each-lake-writer-owns-a-locked-temp-folder.md.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import stat
import threading
import time
import uuid

TEMP_DIR_NAME = ".tmp"

_WRITER = re.compile(r"writer-[0-9a-f]{32}")
_TEMP_FILE = re.compile(r"[0-9a-f]{32}\.parquet")
# How long a lock file may go unlocked under its first name: the writer locks it microseconds after making it.
CLAIMING_GRACE_S = 60.0
_LOGGER = logging.getLogger(__name__)
# This process's temporary folder per lake, and the open lock file that keeps it alive.
_own_folders: dict[str, tuple[str, int]] = {}
_own_folders_lock = threading.Lock()


class LakeFolderError(ValueError):
    """A lake folder the writer would reach through a symbolic link; the message is one line."""


def refuse_linked_folders(lake_dir: str) -> None:
    """Raise :class:`LakeFolderError` when ``.tmp`` or a folder directly in the lake is a symbolic link."""
    with contextlib.suppress(FileNotFoundError), os.scandir(lake_dir) as entries:
        for entry in entries:
            if entry.is_symlink():
                target = os.readlink(entry.path)
                raise LakeFolderError(
                    f"lake folder {entry.path} is a symbolic link (to {target}); the lake writer follows no link "
                    "below the lake's root: make it a folder, or point --lake at the real place"
                )


def make_folders(lake_dir: str, relative: str) -> str:
    """Make the folders of ``relative`` below the lake's root one level at a time, refusing any that is a link;
    return the full path."""
    os.makedirs(lake_dir, exist_ok=True)
    path = lake_dir
    for part in relative.split(os.sep):
        path = os.path.join(path, part)
        try:
            os.mkdir(path)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise LakeFolderError(
                    f"lake folder {path} is not a folder (a symbolic link or a file); the lake writer follows no "
                    "link below the lake's root"
                ) from None
    return path


def writer_temp_dir(lake_dir: str) -> str:
    """This process's own temporary folder in the lake, made and locked on first use."""
    key = os.path.abspath(lake_dir)
    with _own_folders_lock:
        held = _own_folders.pop(key, None)
        if held is not None:
            if os.path.isdir(held[0]):
                _own_folders[key] = held
                return held[0]
            os.close(held[1])  # the lake was removed under this process: start again
        root = make_folders(lake_dir, TEMP_DIR_NAME)
        name = f"writer-{uuid.uuid4().hex}"
        claiming = os.path.join(root, f"{name}.claiming")
        lock = os.open(claiming, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        folder = os.path.join(root, name)
        os.mkdir(folder)
        # Renamed only once locked, so that no clean-up ever finds this lock file free while it is in use.
        os.rename(claiming, os.path.join(root, f"{name}.lock"))
        _own_folders[key] = (folder, lock)
        atexit.register(_remove_own_folder, folder, os.path.join(root, f"{name}.lock"))
        return folder


def clean_stale_temp_files(lake_dir: str) -> int:
    """Remove the temporary files of writers that are gone (their lock is free); return how many were removed.

    A live writer's folder, and any file the writer did not name, stay.
    """
    root = os.path.join(lake_dir, TEMP_DIR_NAME)
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            raise LakeFolderError(f"lake folder {root} is a symbolic link or a file; the lake writer follows no link")
    except FileNotFoundError:
        return 0
    removed = 0
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if _TEMP_FILE.fullmatch(name) and stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)  # left by a writer of before the writers' own folders
            removed += 1
            continue
        writer, _, suffix = name.partition(".")
        if not _WRITER.fullmatch(writer) or suffix not in ("lock", "claiming"):
            continue
        if suffix == "claiming" and time.time() - os.lstat(path).st_mtime < CLAIMING_GRACE_S:
            continue  # a writer between making its lock file and locking it
        removed += _remove_if_stale(path, os.path.join(root, writer))
    if removed:
        _LOGGER.info("Removed %d stale temporary lake files from %s", removed, root)
    return removed


def _remove_own_folder(folder: str, lock_path: str) -> None:
    """At exit: this process's folder goes if nothing is left in it, and its lock file with it."""
    with contextlib.suppress(OSError):
        os.rmdir(folder)
        os.unlink(lock_path)


def _remove_if_stale(lock_path: str, folder: str) -> int:
    """Remove a writer's folder and lock file if its lock is free; return how many temporary files went."""
    try:
        lock = os.open(lock_path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a live writer's
        removed = _remove_writer_folder(folder)
        os.unlink(lock_path)
        return removed
    finally:
        os.close(lock)


def _remove_writer_folder(folder: str) -> int:
    removed = 0
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return 0
    except FileNotFoundError:
        return 0
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if _TEMP_FILE.fullmatch(name) and stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
            removed += 1
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # stays if someone else put a file there
    return removed
