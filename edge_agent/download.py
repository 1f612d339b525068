"""Dataset downloads that resume and verify: a corrupt file is never used.

Contract: :func:`download_dataset` fetches ``GET /datasets/{id}/content`` into ``<dest>/<sha256>.jsonl``.
Bytes go to ``<sha256>.jsonl.part`` first; an interrupted transfer (dropped connection, killed agent)
leaves the part file, and the next attempt asks for the rest with ``Range: bytes=<size>-`` (a server
answering 200 instead of 206 restarts it). The finished file must have the manifest's size and sha256,
and, when the manifest carries a signature, a valid HMAC-SHA256 under the fleet's key; otherwise it is
deleted and fetched once more from scratch, and if that fails too :class:`IntegrityError` is raised. Only
a verified file is renamed to its final name, and a final file is re-verified before it is returned.

Signatures: ``manifest.signature`` is ``hmac-sha256:<hex>``, the HMAC-SHA256 of the ASCII hex sha256 under
the server's ``dataset_signing_key`` (hex), which the operator configures on the device (``dataset_key``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from pathlib import Path

from arte.models import sha256_file
from arte.retry import Retryable
from arte.wire import DatasetManifest
from edge_agent.client import ServerClient
from edge_agent.errors import IntegrityError

__all__ = ["download_dataset", "verify_file", "verify_signature"]

log = logging.getLogger(__name__)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def verify_signature(sha256_hex: str, signature: str, key_hex: str | None) -> None:
    """Check ``signature`` (``hmac-sha256:<hex>``: HMAC-SHA256 of the ASCII hex ``sha256_hex`` under the
    fleet's dataset signing key, given as hex), the server's ``dataset_signing_key`` scheme."""
    scheme, _, mac = signature.partition(":")
    if scheme != "hmac-sha256" or not mac:
        raise IntegrityError(f"unknown signature scheme {scheme!r} (expected 'hmac-sha256:<hex>')")
    if not key_hex:
        raise IntegrityError("the dataset manifest is signed but no dataset signing key is configured on this "
                             "device: `edge-agent config set dataset_key HEX` (the server's dataset_signing_key)")
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise IntegrityError("the configured dataset_key is not hex") from None
    expected = hmac.new(key, sha256_hex.encode("ascii"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac.strip().lower()):
        raise IntegrityError(f"bad signature for sha256 {sha256_hex[:12]}…: not signed with the configured "
                             "dataset key")


def verify_file(path: Path, manifest: DatasetManifest, key_hex: str | None) -> str | None:
    """None when ``path`` is exactly the manifest's content (size, sha256, signature); else the problem."""
    size = path.stat().st_size
    if size != manifest.size:
        return f"size {size} != manifest size {manifest.size}"
    sha = sha256_file(path)
    if sha != manifest.sha256:
        return f"sha256 {sha[:12]}… != manifest sha256 {manifest.sha256[:12]}…"
    if manifest.signature is not None:
        verify_signature(sha, manifest.signature, key_hex)
    return None


def _fetch_into(client: ServerClient, path: str, part: Path, size: int) -> None:
    """One attempt: append the missing bytes of the content to ``part`` (resuming with Range)."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        part.unlink()
        offset = 0
    if offset == size:
        return
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream(path, headers) as resp:
        if resp.status_code == 416:
            part.unlink(missing_ok=True)
            raise Retryable("HTTP 416: the server refused the resume range; restarting from byte 0")
        if resp.status_code >= 400:
            resp.read()
        client.check(path, resp)
        if resp.status_code == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise Retryable(f"HTTP 206 with Content-Range {resp.headers.get('Content-Range')!r}, "
                                 f"expected a range starting at {offset}")
            mode = "ab"
        else:
            offset, mode = 0, "wb"
        log.info("downloading %s from byte %d of %d", path, offset, size)
        with part.open(mode) as f:
            written = offset
            for block in resp.iter_bytes():  # as received: a chunk size would buffer bytes a drop loses
                f.write(block)
                written += len(block)
                if written > size:
                    break  # longer than the manifest says: verification will reject it
            f.flush()
            os.fsync(f.fileno())


def download_dataset(client: ServerClient, manifest: DatasetManifest, dest: str | Path, *,
                     key_hex: str | None = None, refetches: int = 1) -> Path:
    """Download, resume and verify the dataset of ``manifest``; the path of the verified file."""
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"{manifest.sha256}.jsonl"
    if final.exists():
        problem = verify_file(final, manifest, key_hex)
        if problem is None:
            return final
        log.warning("%s is corrupt (%s): deleted, fetching again", final, problem)
        final.unlink()
    part = d / f"{manifest.sha256}.jsonl.part"
    path = f"/datasets/{manifest.dataset_id}/content"
    for n in range(refetches + 1):
        client.call(path, lambda: _fetch_into(client, path, part, manifest.size))
        try:
            problem = verify_file(part, manifest, key_hex)
        except IntegrityError:
            part.unlink(missing_ok=True)
            raise
        if problem is None:
            os.replace(part, final)
            return final
        part.unlink()
        log.warning("dataset %s failed verification (%s): deleted%s", manifest.dataset_id, problem,
                    ", fetching again" if n < refetches else "")
    raise IntegrityError(f"dataset {manifest.dataset_id} from {client.url(path)} failed verification "
                         f"{refetches + 1} times ({problem}); the file was deleted and not used")

