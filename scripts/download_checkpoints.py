"""Download released checkpoints listed in checkpoints/manifest.json and verify their sha256.

python scripts/download_checkpoints.py [NAME ... | --all] [--dir checkpoints] [--manifest FILE]
A file already here is verified (sha256, on every run) and not fetched again; an interrupted download
resumes (run the same command again); a leftover FILE.part that cannot be resumed is verified or fetched
again; nothing unverified gets the final name.
--all with a manifest that lists no checkpoints says so on stderr and exits 0 (there is nothing to fetch).
"""
import os
import sys

from flgc.engine.cli import ArgumentParser, run
from flgc.errors import UsageError
from flgc.records.downloads import download
from flgc.records.manifest import load_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = ArgumentParser(prog="download_checkpoints.py", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--all", action="store_true", help="every checkpoint of the manifest")
    parser.add_argument("--dir", default=os.path.join(ROOT, "checkpoints"), help="where files go")
    parser.add_argument("--manifest", default=os.path.join(ROOT, "checkpoints", "manifest.json"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    entries = {e["name"]: e for e in load_manifest(args.manifest)}
    if args.all == bool(args.names):
        raise UsageError(f"name checkpoints or pass --all (not both); available: {', '.join(entries) or 'none'}")
    if args.all and not entries:
        print(f"{args.manifest} lists no released checkpoints yet; nothing downloaded", file=sys.stderr)
        return
    names = list(entries) if args.all else args.names
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise UsageError(f"unknown checkpoint(s) {', '.join(unknown)}; available: {', '.join(entries) or 'none'}")
    failed = []
    for name in names:  # every release is tried; the ones that fail are named together at the end
        try:
            path, fetched = download(entries[name], args.dir, show_progress=not args.no_progress)
        except UsageError as err:
            failed.append(str(err))
            continue
        print(f"{name}: {path} ({'downloaded' if fetched else 'present'}, sha256 verified)")
    if failed:
        raise UsageError(f"{len(failed)} of {len(names)} checkpoint(s) not verified: " + " | ".join(failed))


if __name__ == "__main__":
    run(main)
