"""The gateway's usage journal: every finished request's usage report is on disk before it is queued for auth.

Reports go to auth in the background (``usage_reports``); until auth has them, they live in this process.
A killed gateway (SIGKILL, OOM) would lose them, and with them the usage of requests its clients already
got answers for. So each report is first appended to ``<dir>/usage-<id>.log`` (length-prefixed protobuf,
one ``write`` each: once written it is the kernel's and survives the process), and the file is emptied
whenever every report in it has reached auth. At start-up the gateway takes over the journals that no live
gateway holds (an exclusive lock marks a live one), sends their reports again and deletes them. Auth keeps
one usage row per reservation, so a report sent twice is counted once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import uuid
from pathlib import Path

from services.common.pb import auth_pb2 as pb

log = logging.getLogger(__name__)
_LEN = struct.Struct("<I")


class UsageJournal:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"usage-{uuid.uuid4().hex[:12]}.log"
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh name: nobody else holds it
        self._held = 0  # bytes written since the file was last emptied

    def append(self, message: pb.ReportUsageRequest) -> None:
        data = message.SerializeToString()
        os.write(self._fd, _LEN.pack(len(data)) + data)
        self._held += 1

    def all_delivered(self) -> None:
        """Every report appended so far has reached auth: empty the file."""
        if self._held:
            os.ftruncate(self._fd, 0)
            self._held = 0

    def adopt(self) -> list[pb.ReportUsageRequest]:
        """The reports of journals no live gateway holds (left by killed ones); their files are removed."""
        reports: list[pb.ReportUsageRequest] = []
        for path in sorted(self.folder.glob("usage-*.log")):
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live gateway's
                found = _read(path)
                reports += found
                path.unlink(missing_ok=True)
                if found:
                    log.warning("took over %d usage reports from %s (a gateway that stopped before auth had "
                                "them); sending them now", len(found), path.name)
            finally:
                os.close(fd)
        return reports

    def close(self, delivered: bool) -> None:
        os.close(self._fd)
        if delivered:
            self.path.unlink(missing_ok=True)


def _read(path: Path) -> list[pb.ReportUsageRequest]:
    data = path.read_bytes()
    out, at = [], 0
    while at + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, at)
        body = data[at + _LEN.size:at + _LEN.size + n]
        if len(body) < n:
            log.error("%s ends in a torn record (a write cut short); skipping its last %d bytes", path, len(body))
            break
        try:
            out.append(pb.ReportUsageRequest.FromString(body))
        except Exception:  # noqa: BLE001 - a corrupt record must not stop the others
            log.error("unreadable usage record at byte %d of %s", at, path)
        at += _LEN.size + n
    return out
