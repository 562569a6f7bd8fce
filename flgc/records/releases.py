"""Released checkpoints: the manifest, and resumable, verified downloads.

checkpoints/manifest.json = {"checkpoints": [{name, config, file, sha256, bytes, accuracy, mflops,
data, hardware, schedule, url (optional)}, ...]}. A download goes to FILE.part and is renamed to FILE
only after its size and sha256 match; an interrupted one resumes with an HTTP Range request (or
restarts when the server ignores it).
"""
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request

from ..errors import UsageError
from ..fileio import publish

REQUIRED = ("name", "file", "sha256", "bytes")
CHUNK = 1 << 16


def load_manifest(path):
    if not os.path.isfile(path):
        raise UsageError(f"manifest {path} does not exist")
    try:
        with open(path) as f:
            entries = json.load(f)["checkpoints"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"manifest {path} is not valid ({err}); expected {{\"checkpoints\": [...]}}") from None
    if not isinstance(entries, list):
        raise UsageError(f"manifest {path} is not valid: \"checkpoints\" must be a list")
    for entry in entries:
        problem = entry_problem(entry)
        if problem:
            name = entry.get("name", "?") if isinstance(entry, dict) else "?"
            raise UsageError(f"manifest {path}: entry {name} {problem}")
    return entries


def entry_problem(entry):
    """What is wrong with one manifest entry, or None."""
    if not isinstance(entry, dict):
        return "is not an object"
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not (isinstance(entry["sha256"], str) and len(entry["sha256"]) == 64
            and all(c in "0123456789abcdef" for c in entry["sha256"])):
        return "has a sha256 that is not 64 lowercase hex digits"
    if not isinstance(entry["bytes"], int) or isinstance(entry["bytes"], bool) or entry["bytes"] < 1:
        return "has a size (bytes) that is not a positive integer"
    if os.path.basename(entry["file"]) != entry["file"] or entry["file"] in ("", ".", ".."):
        return f"names file {entry['file']!r}, which is not a plain file name"
    return None


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path, entry):
    return os.path.isfile(path) and os.path.getsize(path) == entry["bytes"] and sha256_file(path) == entry["sha256"]


def _fetch_once(url, part, progress):
    """Append what the server sends to `part`, resuming from its current size when possible."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=30) as response:
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


def download(entry, directory, attempts=5, show_progress=True):
    """Path of the verified file of `entry` in `directory`, downloading it when needed."""
    path = os.path.join(directory, entry["file"])
    if verified(path, entry):
        return path, False
    if not entry.get("url"):
        raise UsageError(f"{entry['name']}: {path} is missing or does not match its sha256, and the "
                         f"manifest gives no url to fetch it from")
    os.makedirs(directory, exist_ok=True)
    part = path + ".part"
    progress = None
    if show_progress:
        from tqdm import tqdm
        progress = tqdm(total=entry["bytes"], unit="B", unit_scale=True, desc=entry["name"], leave=False)
    last_error = None
    try:
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
            break
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


# --- releasing -----------------------------------------------------------------------------------
def save_manifest(path, entries):
    """Write the manifest atomically (indent 1, entries in the given order)."""
    from ..fileio import atomic_path
    with atomic_path(path) as temp, open(temp, "w") as f:
        json.dump({"checkpoints": entries}, f, indent=1)
        f.write("\n")


def add_entry(entries, entry, force=False):
    """The manifest entries with `entry` added, or replacing the one of its name. Replacing an entry
    whose file has another sha256 is refused (UsageError) unless `force`; returns (entries, replaced)."""
    problem = entry_problem(entry)
    if problem:
        raise UsageError(f"entry {entry.get('name', '?')} {problem}")
    old = next((e for e in entries if e["name"] == entry["name"]), None)
    if old is not None and old["sha256"] != entry["sha256"] and not force:
        raise UsageError(f"the manifest already releases {entry['name']} with sha256 {old['sha256'][:12]}..., "
                         f"this file has {entry['sha256'][:12]}...; pass --force to replace the release")
    clashing = [e["name"] for e in entries if e["file"] == entry["file"] and e["name"] != entry["name"]]
    if clashing:
        raise UsageError(f"file {entry['file']} already belongs to the release {clashing[0]}; choose another name")
    kept = [entry if e["name"] == entry["name"] else e for e in entries]
    return (kept if old is not None else kept + [entry]), old is not None
