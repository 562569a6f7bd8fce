"""The manifest (flgc.records.manifest) and downloads (flgc.records.downloads) from a local HTTP server on
127.0.0.1: complete, truncated then resumed, bad hash, leftover partial files that cannot be resumed;
manifest entries that are refused."""
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import ROOT, run_main

from flgc.errors import UsageError
from flgc.records.manifest import load_manifest

PAYLOAD = os.urandom(300_000)


class Handler(BaseHTTPRequestHandler):
    truncate_next = 0  # number of responses to cut short
    refuse_next = 0  # number of range requests to answer 416 whatever they ask
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(PAYLOAD) or Handler.refuse_next:  # as real servers answer a range past the end
                Handler.refuse_next = max(Handler.refuse_next - 1, 0)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.truncate_next:
            Handler.truncate_next -= 1
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def manifest(tmp_path, url, sha=None):
    entry = {"name": "tiny", "file": "tiny.pt", "sha256": sha or hashlib.sha256(PAYLOAD).hexdigest(),
             "bytes": len(PAYLOAD), "url": url}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"checkpoints": [entry]}))
    return path


class Result:
    def __init__(self, returncode, captured):
        self.returncode, self.stdout, self.stderr = returncode, captured.out, captured.err


@pytest.fixture
def download(capsys):
    """download(tmp_path, manifest, *names): scripts/download_checkpoints.py run in this process."""
    def call(tmp_path, manifest_path, *names):
        code = run_main("scripts/download_checkpoints.py", *(names or ("tiny",)), "--dir", tmp_path / "ckpt",
                        "--manifest", manifest_path, "--no-progress")
        return Result(code, capsys.readouterr())
    return call


def test_download_verifies_and_skips_verified(tmp_path, server, download):
    m = manifest(tmp_path, f"{server}/tiny.pt")
    first = download(tmp_path, m)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "ckpt" / "tiny.pt").read_bytes() == PAYLOAD
    Handler.requests.clear()
    second = download(tmp_path, m)
    assert "tiny.pt (present, sha256 verified)" in second.stdout and Handler.requests == []
    assert "tiny.pt (downloaded, sha256 verified)" in first.stdout


def test_truncated_transfer_resumes_with_a_range_request(tmp_path, server, download):
    Handler.requests.clear()
    Handler.truncate_next = 2
    result = download(tmp_path, manifest(tmp_path, f"{server}/tiny.pt"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ckpt" / "tiny.pt").read_bytes() == PAYLOAD
    assert Handler.requests[0] is None and Handler.requests[1].startswith("bytes=")
    assert not (tmp_path / "ckpt" / "tiny.pt.part").exists()


@pytest.mark.parametrize("leftover, requests", [
    (PAYLOAD + b"more", [None]),  # longer than the file: a range request would get 416 forever
    (PAYLOAD[:-1] + b"x", [None]),  # as long as the file, not the file
    (PAYLOAD, []),  # the whole file, never renamed: verified, no request
])
def test_a_leftover_part_that_cannot_be_resumed_is_verified_or_fetched_again(tmp_path, server, download, leftover,
                                                                             requests):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "tiny.pt.part").write_bytes(leftover)
    Handler.requests.clear()
    result = download(tmp_path, manifest(tmp_path, f"{server}/tiny.pt"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ckpt" / "tiny.pt").read_bytes() == PAYLOAD and Handler.requests == requests
    assert not (tmp_path / "ckpt" / "tiny.pt.part").exists()


def test_a_416_answer_deletes_the_part_and_starts_over(tmp_path, server, download):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "tiny.pt.part").write_bytes(PAYLOAD[:1000])
    Handler.requests.clear()
    Handler.refuse_next = 1
    result = download(tmp_path, manifest(tmp_path, f"{server}/tiny.pt"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ckpt" / "tiny.pt").read_bytes() == PAYLOAD and Handler.requests == ["bytes=1000-", None]


def test_hash_mismatch_leaves_no_file_under_the_final_name(tmp_path, server, download):
    result = download(tmp_path, manifest(tmp_path, f"{server}/tiny.pt", sha="0" * 64))
    assert result.returncode == 2 and "does not match its sha256" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ckpt" / "tiny.pt").exists() and not (tmp_path / "ckpt" / "tiny.pt.part").exists()


def test_file_urls_and_unknown_names(tmp_path, download):
    source = tmp_path / "source.pt"
    source.write_bytes(PAYLOAD)
    m = manifest(tmp_path, source.as_uri())
    fetched = download(tmp_path, m)
    assert fetched.returncode == 0 and "(downloaded, sha256 verified)" in fetched.stdout
    assert (tmp_path / "ckpt" / "tiny.pt").read_bytes() == PAYLOAD
    result = download(tmp_path, m, "nope")
    assert result.returncode == 2 and "available: tiny" in result.stderr


@pytest.mark.parametrize("url", ["checkpoints/tiny.pt", "htps://example.org/tiny.pt"])
def test_a_url_that_is_no_url_is_one_line(tmp_path, download, url):
    result = download(tmp_path, manifest(tmp_path, url))
    assert result.returncode == 2 and "is not an https/http/file URL" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_repository_manifest_is_valid():
    entries = load_manifest(os.path.join(ROOT, "checkpoints", "manifest.json"))
    assert isinstance(entries, list)
    assert len({e["name"] for e in entries}) == len(entries)  # names are unique


@pytest.mark.parametrize("change, message", [
    ({"sha256": "abc"}, "64 lowercase hex"),
    ({"bytes": 0}, "positive integer"),
    ({"file": "../outside.pt"}, "plain file name"),
    ({"sha256": None}, "64 lowercase hex"),
])
def test_bad_manifest_entries_are_refused(tmp_path, change, message):
    path = manifest(tmp_path, "file:///nowhere")
    entry = {**json.loads(path.read_text())["checkpoints"][0], **change}
    path.write_text(json.dumps({"checkpoints": [entry]}))
    with pytest.raises(UsageError, match=message):
        load_manifest(str(path))
    assert load_manifest(str(manifest(tmp_path, "file:///nowhere")))[0]["bytes"] == len(PAYLOAD)


def test_all_with_an_empty_manifest_says_so(tmp_path, download):
    empty = tmp_path / "manifest.json"
    empty.write_text(json.dumps({"checkpoints": []}))
    result = download(tmp_path, empty, "--all")
    assert result.returncode == 0 and result.stdout == ""
    assert "lists no released checkpoints" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "ckpt").exists()



def test_recipe_names_the_precision_auto_resolved_to():
    from flgc.engine import config as config_lib
    from flgc.records.manifest import recipe_of
    cfg = config_lib.load(os.path.join(ROOT, "configs", "cpu-long", "mbv2_baseline.yaml"))
    assert cfg.train.amp == "auto" and "bf16" not in recipe_of(cfg)
    assert recipe_of(cfg, "bf16").endswith("label smoothing 0.1, bf16; 50,000 train images")
    assert "(0 on norms and biases, 0 on depthwise)" in recipe_of(cfg) and "none" not in recipe_of(cfg, "none")
    assert recipe_of(cfg, [("none", 1)]).endswith("label smoothing 0.1, fp32; 50,000 train images")
    assert recipe_of(cfg, [("none", 1), ("bf16", 45)]).endswith("0.1, fp32, bf16 from epoch 45; 50,000 train images")
    assert "fp32" not in recipe_of(cfg) and "auto" not in recipe_of(cfg, [])
