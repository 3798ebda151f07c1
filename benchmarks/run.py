"""Run the benchmarks, each in its own process, and paste their tables into the docs.

Usage::

    python -m benchmarks.run [--quick] [--only loss_kernels,train_step,input_pipeline]
        [--results-dir DIR] [--doc docs/performance.md]

Each benchmark ``benchmarks/<name>.py`` is run as ``python -m benchmarks.<name>
[--quick] --results-dir DIR`` (in the order of :data:`BENCHMARKS`) and writes
``DIR/<name>.json``. Then the doc gets, between ``<!-- BEGIN <name> -->`` /
``<!-- END <name> -->`` markers, a ``machine`` section and ``<name>.markdown(data)``
for every benchmark that succeeded; the rest of the doc is left as it is. A
failing benchmark is named and the exit status is 1, but the sections of the
others are still written.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    PERFORMANCE_DOC,
    RESULTS_DIR,
    ROOT,
    machine_line,
    replace_section,
)

# train_step before input_pipeline: the pipeline is compared with the fastest step.
BENCHMARKS = ("loss_kernels", "train_step", "input_pipeline")

DOC_TITLE = """# Performance

Measured by `python -m benchmarks.run` (see `benchmarks/`). The sections between
the `BEGIN` / `END` markers are rewritten by each run; edit outside them.
"""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--doc", default=str(PERFORMANCE_DOC))
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the doc's tables from the results already in --results-dir")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in BENCHMARKS]
    if unknown or not only:
        p.error(f"--only: unknown benchmark(s) {unknown}; expected some of {BENCHMARKS}")
    args.only = [b for b in BENCHMARKS if b in only]  # always in the canonical order
    return args


def run_benchmark(name, *, quick, results_dir):
    """Run one benchmark in a fresh process; return its results dict or raise RuntimeError."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--results-dir", str(results_dir)]
    if quick:
        cmd.append("--quick")
    path = Path(results_dir) / f"{name}.json"
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    seconds = time.time() - start
    if rc != 0:
        raise RuntimeError(f"exited with status {rc} after {seconds:.0f} s")
    # a results file from an earlier run must not pass for this one
    if not path.exists() or path.stat().st_mtime < start - 1:
        raise RuntimeError(f"exited 0 but did not write {path}")
    print(f"== {name}: done in {seconds:.0f} s", flush=True)
    return json.loads(path.read_text())


def machine_markdown(info):
    return f"Machine of the last run: {machine_line(info)}."


def write_text_atomic(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sections, failed, machines = {}, {}, []
    for name in args.only:
        try:
            if args.render_only:
                data = json.loads((Path(args.results_dir) / f"{name}.json").read_text())
            else:
                data = run_benchmark(name, quick=args.quick, results_dir=args.results_dir)
            sections[name] = importlib.import_module(f"benchmarks.{name}").markdown(data)
            machines.append(data["machine"])
        except Exception as exc:  # noqa: BLE001 - reported below, the others go on
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"== {name}: FAILED: {failed[name]}", file=sys.stderr, flush=True)

    doc = Path(args.doc)
    text = doc.read_text() if doc.exists() else DOC_TITLE
    if machines:  # as the benchmarks saw it (common.machine() in their processes)
        text = replace_section(text, "machine", machine_markdown(machines[0]))
    for name in args.only:  # canonical order, so that new sections are appended in it
        if name in sections:
            text = replace_section(text, name, sections[name])
    write_text_atomic(doc, text)
    print(f"wrote {doc}: sections {', '.join(sections) or 'none'}", flush=True)
    if failed:
        print("failed: " + "; ".join(f"{n} ({why})" for n, why in failed.items()),
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
