"""``make profile``: where the CPU goes, as py-spy flame graphs of the benchmark's reference loop and of the
``--batch`` pipeline over the same input, with each one's ten hottest frames printed as text.

    python -m tools.profile [--copies N] [--out DIR]

Writes ``DIR/loop.svg`` and ``DIR/batch.svg`` (flame graphs: open them in a browser) and ``DIR/*.txt`` (py-spy's
collapsed stacks, one line per stack and its sample count), and prints the frames most samples were taken in, by
their own time among the samples of the work itself (the loop's calls, the pipeline's bundles), so that imports and
start-up, seconds of a run this short, do not crowd out the hot path. ``python -m tools.profile loop INPUT`` runs the
reference loop alone (what the first graph samples).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from schemas.registry import SchemaRegistry
from tools.bench import SAMPLE, make_input, plain_loop

SAMPLES_PER_SECOND = 250
TOP_FRAMES = 10
# py-spy names a frame "function (file:line)".
_FRAME_LINE = re.compile(r":\d+\)$")
RUN_TIMEOUT_S = 900
# The frame each graph's work runs under: the loop's own function, and the SDK worker's processing of a bundle.
WORK_FRAMES = {
    "loop": "plain_loop (tools/bench.py",
    "batch": "BundleProcessor.process_bundle (apache_beam/runners/worker/bundle_processor.py",
}


def top_frames(collapsed: str, count: int = TOP_FRAMES, within: str = "") -> list[tuple[str, float]]:
    """The ``count`` functions with the most samples of their own in py-spy's collapsed stacks, with their share
    (lines of one function count together; a sample of a process between Python frames counts for none). With
    ``within``, only the stacks passing through a frame that starts with it count."""
    own: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        if within and not any(frame.startswith(within) for frame in frames):
            continue
        if samples.isdigit() and not frames[-1].startswith("process "):
            own[_FRAME_LINE.sub(")", frames[-1])] += int(samples)
    total = sum(own.values()) or 1
    return [(frame, samples / total) for frame, samples in own.most_common(count)]


def record(command: list[str], out: Path, name: str, within: str) -> list[tuple[str, float]]:
    """Runs ``command`` under py-spy twice (a flame graph, then the collapsed stacks); its hottest frames under
    ``within``."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: make venv installs it with the tools")
    for form, path in (("flamegraph", out / f"{name}.svg"), ("raw", out / f"{name}.txt")):
        sampler = [spy, "record", "--subprocesses", "--rate", str(SAMPLES_PER_SECOND), "--format", form]
        subprocess.run(
            [*sampler, "--output", str(path), "--", *command],
            check=True,
            timeout=RUN_TIMEOUT_S,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return top_frames((out / f"{name}.txt").read_text(), within=within)


def run_loop(path: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        plain_loop(path, SchemaRegistry.load(), Path(work))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5, help="copies of the sample stream to profile (default 5)")
    parser.add_argument("--out", type=Path, default=Path("data/profile"), help="where the graphs go (data/profile)")
    commands = parser.add_subparsers(dest="command")
    loop = commands.add_parser("loop", help="run the reference loop over INPUT alone")
    loop.add_argument("input", type=Path)
    args = parser.parse_args(argv)
    if args.command == "loop":
        run_loop(args.input)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        path = Path(work, "input.jsonl")
        messages = make_input(SAMPLE, args.copies, path)
        cli = [sys.executable, "-m", "pipelines.cli"]
        # One worker: the graph of the pipeline itself, not of a process waiting for its workers.
        run = [*cli, "run", f"--source=replay:{path}", "--batch", "--workers=1", f"--lake={work}/lake"]
        stores = [f"--identity-store=sqlite:///{work}/identity.sqlite", f"--profile-store=sqlite:///{work}/p.sqlite"]
        targets = {
            "loop": ([sys.executable, "-m", "tools.profile", "loop", str(path)], WORK_FRAMES["loop"]),
            "batch": ([*run, *stores], WORK_FRAMES["batch"]),
        }
        print(f"input: {messages} messages ({args.copies} copies of {SAMPLE.name}); graphs in {args.out}/")
        for name, (command, within) in targets.items():
            started = time.perf_counter()
            frames = record(command, args.out, name, within)
            took = time.perf_counter() - started
            print(f"{name}: {args.out / f'{name}.svg'} ({took:.0f} s), hottest frames under {within.split()[0]}:")
            for frame, share in frames:
                print(f"  {share:6.1%}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
