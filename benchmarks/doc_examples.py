"""Rerun the command-line examples of the README and docs/ and compare what they print with what the docs show.

In a fenced block, a line starting with ``$ `` is a command (a trailing ``\\`` continues it on the next
line); the lines up to the next ``$ `` line are the output the docs show. A command followed directly by
another has no documented output and is only run (the ``resnetlab train`` lines that make the checkpoints
the later examples read). An output line ``...`` stands for any lines. Durations (``5.8s``, ``22 s``) are
not compared. The commands of one file run in order, in one scratch folder, on one thread.

    python benchmarks/doc_examples.py                       # every file; exit 1 if any example differs
    python benchmarks/doc_examples.py docs/evaluate.md      # one file
    python benchmarks/doc_examples.py --update docs/analysis.md   # write what the commands print now

The numbers of trained examples are exact for one CPU and thread count; another CPU rounds differently,
so there they may differ in the last digits (the docs say where they were measured).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|min)\b")


def examples(text: str):
    """``(command, documented output or None, (start, end) line span of that output)`` in document order."""
    line_of = lambda pos: text.count("\n", 0, pos)  # noqa: E731
    for block in FENCE.finditer(text):
        first = line_of(block.start(1))
        lines = block.group(1).rstrip("\n").split("\n")
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                i += 1
                continue
            command, i = lines[i][2:], i + 1
            while command.rstrip().endswith("\\") and i < len(lines):
                command, i = command.rstrip()[:-1].rstrip() + " " + lines[i].strip(), i + 1
            start = i
            while i < len(lines) and not lines[i].startswith("$ "):
                i += 1
            yield command.split("  #")[0].strip(), (lines[start:i] or None), (first + start, first + i)


def matches(documented: list[str], printed: list[str]) -> bool:
    """Line by line, with durations masked and a ``...`` line matching any run of lines."""
    pattern = "".join("(?:.*\n)*?" if line.strip() == "..." else re.escape(DURATION.sub("T", line.rstrip())) + "\n"
                        for line in documented)
    return re.fullmatch(pattern, "".join(DURATION.sub("T", line.rstrip()) + "\n" for line in printed)) is not None


def updated(documented: list[str], printed: list[str]) -> list[str]:
    """The new documented output: what was printed, keeping an elision ``...`` and as many lines after it."""
    if documented[0].strip() == "...":
        return ["..."] + printed[len(printed) - (len(documented) - 1):]
    return printed


def synthetic_images(folder: Path) -> None:
    """The two images docs/evaluate.md predicts: test image 0 of the synthetic set, and image 1 in greyscale."""
    from resnetlab.datasets import load_dataset
    test = load_dataset("synthetic")["test"]
    for index, name, mode in ((0, "shape0.png", "RGB"), (1, "shape1_gray.png", "L")):
        pixels = test.x[index].permute(1, 2, 0).numpy().astype(np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / name)


SETUP = {"evaluate.md": synthetic_images}


def check(path: Path, update: bool) -> int:
    """Run every example of ``path``; returns the number that differ (and with ``update`` rewrites them)."""
    text = path.read_text()
    doc_lines = text.split("\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    differ, replacements = 0, []
    with tempfile.TemporaryDirectory(prefix="doc-examples-") as tmp:
        if path.name in SETUP:
            SETUP[path.name](Path(tmp))
        for command, documented, span in examples(text):
            if "..." in command.split():
                print(f"  {path.name}: skipped (not a whole command): {command}")
                continue
            t0 = time.perf_counter()
            run = subprocess.run(command, shell=True, cwd=tmp, env=env, capture_output=True, text=True)
            printed = run.stdout.rstrip("\n").split("\n")
            if run.returncode:
                print(f"  {path.name}: FAILED (exit {run.returncode}): {command}\n{run.stderr.strip()[-2000:]}")
                differ += 1
                continue
            if documented is None:
                print(f"  {path.name}: ran ({time.perf_counter() - t0:.0f} s): {command}")
            elif matches(documented, printed):
                print(f"  {path.name}: same ({time.perf_counter() - t0:.0f} s): {command}")
            else:
                differ += 1
                print(f"  {path.name}: DIFFERS: {command}")
                for line in documented:
                    print(f"      doc | {line}")
                for line in printed:
                    print(f"      now | {line}")
                replacements.append((span, updated(documented, printed)))
    if update and replacements:
        for (start, end), new in sorted(replacements, reverse=True):
            doc_lines[start:end] = new
        path.write_text("\n".join(doc_lines))
        print(f"  {path.name}: {len(replacements)} example(s) rewritten")
    return differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    parser.add_argument("--update", action="store_true", help="rewrite the examples that differ with the output now")
    args = parser.parse_args()
    files = args.files or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    differ = sum(check(f.resolve(), args.update) for f in files)
    print(f"{differ} example(s) differ" if differ else "every example prints what the docs show")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
