"""The paper's CIFAR-10 results table: released checkpoints and local runs next to the published rows.

python scripts/results_table.py [RUN_DIR or CHECKPOINT ...] [--no-eval] [--wide] [--json] [--plot FILE.png] [KEY=VALUE ...]
python scripts/results_table.py --write-pages [--plot docs/results_cpu.png]
Rows: the paper's and the reference implementation's, checkpoints/manifest.json, then each run
directory (its last.pt, the run as trained; else best.pt, an epoch chosen on the test set, which the
row's epochs say) or checkpoint given. The accuracy column is single-crop over the recipe's test images
(flip test-time augmentation and the first-1000 figures of releases stay in the manifest). Accuracy is
evaluated on the test set when the data are at hand (data.root=DIR), else taken from what the checkpoint
recorded in training. The table printed is the README's short one (model, G, MMac, accuracy on all
test images and on images 0-999, recipe in a few words); --wide prints every column (docs/results.md).
--write-pages (after a release) puts both tables, from the manifest alone, between the marker comments of
README.md and docs/results.md, which a test holds to this output.
"""
import argparse
import os
import sys

from flgc.engine.cli import ArgumentParser, run
from flgc.engine.evaluation import parse_evaluation_overrides
from flgc.engine.plots import check_figure_path, save_figure
from flgc.errors import UsageError
from flgc.records import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("inputs", nargs="*", metavar="RUN_DIR|CHECKPOINT|KEY=VALUE",
                        help="run directories, checkpoint files, and data overrides such as data.root=DIR")
    parser.add_argument("--json", action="store_true", help="stdout is one JSON object with `rows`")
    parser.add_argument("--plot", metavar="FILE.png", help="accuracy vs MMac and per-layer MMac picture")
    parser.add_argument("--wide", action="store_true", help="every column: data, hardware, minutes, params")
    parser.add_argument("--no-eval", action="store_true", help="never evaluate: recorded / manifest accuracies only")
    parser.add_argument("--write-pages", action="store_true",
                        help="rewrite the tables of README.md and docs/results.md from the manifest (no evaluation)")
    parser.add_argument("--pages-root", default=ROOT, help=argparse.SUPPRESS)  # the repository --write-pages edits
    parser.add_argument("--manifest", default=os.path.join(ROOT, "checkpoints", "manifest.json"))
    parser.add_argument("--baseline-config", default=os.path.join(ROOT, "configs", "mbv2_baseline.yaml"))
    args = parser.parse_args()
    paths = [a for a in args.inputs if "=" not in a or os.path.exists(a)]
    overrides = parse_evaluation_overrides([a for a in args.inputs if a not in paths], "results_table.py")
    if args.write_pages and (paths or overrides or args.json or args.wide):
        raise UsageError("--write-pages takes the manifest's rows only: no RUN_DIR, CHECKPOINT, KEY=VALUE, --json or "
                         "--wide")
    if args.plot:
        check_figure_path(args.plot, "--plot")
    baseline = results.baseline_mflops(args.baseline_config)
    rows = results.collect(args.manifest, paths, overrides, not (args.no_eval or args.write_pages), baseline)
    edits = results.page_edits(rows, baseline, args.pages_root) if args.write_pages else []  # checked before any write
    if args.plot:
        save_figure(results.figure(rows, baseline), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.write_pages:
        results.write_pages(edits)
        print(f"rewrote {', '.join(p for p, _ in edits)}" if edits else "the pages' tables are current", file=sys.stderr)
        return
    table = results.markdown if args.wide else results.headline
    print(results.to_json(rows, baseline) if args.json else table(rows, baseline))


if __name__ == "__main__":
    run(main)
