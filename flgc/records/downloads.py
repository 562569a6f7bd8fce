"""Verified downloads of released checkpoints: download(entry, directory) fetches the file a manifest
entry (flgc.records.manifest) names from its url.

It fetches to FILE.part and renames it to FILE only after its size and sha256 match; an interrupted
download resumes with an HTTP Range request (or restarts when the server ignores it). A leftover
FILE.part that cannot be resumed (as large as the entry or larger, or answered with HTTP 416) is
verified and kept when it is the file, else deleted and fetched again.
"""
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request

from ..errors import UsageError
from ..fileio import publish
from .manifest import sha256_file, verified

CHUNK = 1 << 16
URL_SCHEMES = ("https", "http", "file")


def _fetch_once(url, part, progress):
    """Append what the server sends to `part`, resuming from its current size when possible. An HTTP
    416 answer (nothing past what `part` holds) deletes `part`, so that the next attempt starts over."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        opened = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            os.unlink(part)
        raise
    with opened as response:
        status = getattr(response, "status", None) or response.getcode()
        if have and status != 206:  # the server ignored the range: start over
            have = 0
        if progress is not None:
            progress.reset()
            progress.update(have)
        with open(part, "ab" if have else "wb") as f:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                if progress is not None:
                    progress.update(len(block))


def _leftover(part, entry):
    """Deal with a FILE.part that a Range request cannot continue (as large as the entry or larger):
    True when it is the file (verified), else it is deleted."""
    if not os.path.exists(part) or os.path.getsize(part) < entry["bytes"]:
        return False
    if verified(part, entry):
        return True
    os.unlink(part)
    return False


def _fetch_attempts(entry, part, attempts, progress):
    """Fetch `entry` into `part` in up to `attempts` tries, resuming a partial file; the last error or None."""
    last_error = None
    for _ in range(attempts):
        try:
            _fetch_once(entry["url"], part, progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            last_error = err  # keep the partial file: the next attempt resumes it
            continue
        size = os.path.getsize(part)
        if size < entry["bytes"]:
            last_error = f"got {size} of {entry['bytes']} bytes"
            continue
        if size > entry["bytes"]:  # not this file: start over
            os.unlink(part)
            last_error = f"got {size} bytes, more than the {entry['bytes']} of the file"
            continue
        return None
    return last_error


def download(entry, directory, attempts=5, show_progress=True):
    """(path, fetched) of the verified file of `entry` in `directory`, downloading it when needed: the
    sha256 of a file already there is checked every time."""
    path = os.path.join(directory, entry["file"])
    if verified(path, entry):
        return path, False
    part = path + ".part"
    if _leftover(part, entry):
        publish(part, path)
        return path, True
    if not entry.get("url"):
        raise UsageError(f"{entry['name']}: {path} is missing or does not match its sha256, and the "
                         f"manifest gives no url to fetch it from")
    if urllib.parse.urlsplit(entry["url"]).scheme not in URL_SCHEMES:
        raise UsageError(f"{entry['name']}: the manifest's url {entry['url']!r} is not an {'/'.join(URL_SCHEMES)} URL")
    os.makedirs(directory, exist_ok=True)
    progress = None
    if show_progress:
        from tqdm import tqdm
        progress = tqdm(total=entry["bytes"], unit="B", unit_scale=True, desc=entry["name"], leave=False)
    try:
        last_error = _fetch_attempts(entry, part, attempts, progress)
    finally:
        if progress is not None:
            progress.close()
    if not os.path.exists(part) or os.path.getsize(part) != entry["bytes"]:
        raise UsageError(f"{entry['name']}: download from {entry['url']} did not complete after {attempts} "
                         f"attempts ({last_error}); run again to resume")
    if sha256_file(part) != entry["sha256"]:
        os.unlink(part)
        raise UsageError(f"{entry['name']}: the downloaded file does not match its sha256 "
                         f"{entry['sha256'][:12]}...; it was deleted")
    publish(part, path)
    return path, True
