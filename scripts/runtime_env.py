"""Process-level runtime settings for CPU training: the memory allocator and OpenMP runtime loaded
through LD_PRELOAD, and thread affinity. Nothing here is required: a library that is not installed
is left out, and training runs the same (only slower or faster) with any of these settings.

    python scripts/runtime_env.py [SETTING]         # prints the environment of SETTING (default: the
                                                    # recipe's, `recommended`), one NAME=VALUE per line
    python scripts/runtime_env.py --json SETTING    # {"environment": {NAME: VALUE}, "missing": [library]}
    python scripts/runtime_env.py --list            # the settings, one per line

scripts/train_rows.sh reads the first form; benchmarks/bench_runtime.py times the settings side by side.
"""
import glob
import json
import os
import sys

# jemalloc keeps freed pages instead of returning them to the system after every step; with its
# defaults a training step is far slower (docs/training-speed.md)
JEMALLOC_CONF = ("oversize_threshold:1,background_thread:true,metadata_thp:auto,"
                 "dirty_decay_ms:-1,muzzy_decay_ms:-1")

LIBRARIES = {  # name: file names to look for (first found wins)
    "tcmalloc": ["libtcmalloc_minimal.so.4", "libtcmalloc.so.4"],
    "jemalloc": ["libjemalloc.so.2", "libjemalloc.so"],
    "iomp": ["libiomp5.so"],
}

# setting: (libraries to preload, extra environment)
SETTINGS = {
    "default": ([], {}),
    "tcmalloc": (["tcmalloc"], {}),
    "jemalloc": (["jemalloc"], {"MALLOC_CONF": JEMALLOC_CONF}),
    "iomp": (["iomp"], {}),
    "iomp+tcmalloc": (["iomp", "tcmalloc"], {}),
    "bound": ([], {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}),
    "tcmalloc+bound": (["tcmalloc"], {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}),
    "jemalloc+bound": (["jemalloc"], {"MALLOC_CONF": JEMALLOC_CONF, "OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}),
}
RECOMMENDED = "iomp+tcmalloc"  # what scripts/train_rows.sh uses when present (docs/training-speed.md)


def find_library(name):
    """Path of one of LIBRARIES[name], or None: the system's library directories, then this
    Python environment's lib/ (where pip puts intel-openmp's libiomp5)."""
    dirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
            os.path.join(sys.prefix, "lib")]
    for filename in LIBRARIES[name]:
        for directory in dirs:
            hits = glob.glob(os.path.join(directory, filename))
            if hits:
                return hits[0]
    return None


def environment(setting):
    """(extra environment of `setting`, names of the libraries it lacks here)."""
    libraries, extra = SETTINGS[setting]
    paths, missing = [], []
    for name in libraries:
        path = find_library(name)
        (paths if path else missing).append(path or name)
    env = dict(extra)
    if paths:
        env["LD_PRELOAD"] = ":".join(paths + [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p])
    return env, missing


def main(argv):
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if argv == ["--list"]:
        print("\n".join(SETTINGS))
        return 0
    as_json = argv[:1] == ["--json"]
    argv = argv[1:] if as_json else argv
    setting = argv[0] if argv else RECOMMENDED
    if setting not in SETTINGS or len(argv) > 1:
        print(f"runtime_env.py: unknown setting {' '.join(argv)!r}; allowed: {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    env, missing = environment(setting)
    if as_json:
        print(json.dumps({"environment": env, "missing": missing}))
        return 0
    for name in missing:
        print(f"runtime_env.py: {name} not found; running without it", file=sys.stderr)
    for key, value in env.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
