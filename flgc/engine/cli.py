"""What the entry points share: one-line errors with exit code 2, and argument parsing."""
import argparse
import sys

from ..errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one stderr line, exit code 2, takes positionals before
    and after options, and shows the description (the script's docstring) as written in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        # positionals may follow options (RUN_DIR --name X data.root=DIR), as the commands' help shows them
        return self.parse_intermixed_args(args, namespace)

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def human_stream(json_output):
    """Where an entry point's human-readable lines go: stderr when stdout carries only JSON."""
    return sys.stderr if json_output else sys.stdout


def run(main, argv=None):
    """Call main(argv) (main() when argv is None: the command line); a UsageError becomes one stderr
    line and exit code 2, Ctrl-C exit code 130."""
    try:
        main() if argv is None else main(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
