"""The docs show what the commands print.

Every ``$ resnetlab summary`` and ``$ resnetlab models`` example of the README and docs/summary.md is run and
compared with its documented output (shapes, parameters and MACs come from the meta device, so they are the
same on any machine). The examples that train, on CPU-dependent numbers, are rerun by
``benchmarks/doc_examples.py``, whose parser and comparison these tests use.
"""
import importlib.util
import os
import shlex

import pytest

from resnetlab import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("doc_examples", os.path.join(ROOT, "benchmarks", "doc_examples.py"))
doc_examples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(doc_examples)


@pytest.mark.parametrize("doc", ["README.md", "docs/summary.md"])
def test_summary_examples_print_what_the_docs_show(doc, capsys):
    with open(os.path.join(ROOT, doc)) as fh:
        text = fh.read()
    cases = [(command, shown) for command, shown, _ in doc_examples.examples(text)
             if shown and command.split()[:2] in (["resnetlab", "summary"], ["resnetlab", "models"])]
    assert len(cases) >= 3, f"{doc}: expected its summary examples"
    for command, shown in cases:
        assert cli.main(shlex.split(command)[1:]) == 0, command
        printed = capsys.readouterr().out.rstrip("\n").split("\n")
        assert doc_examples.matches(shown, printed), f"{doc}: `{command}` now prints:\n" + "\n".join(printed)


def test_the_comparison_can_fail():
    assert doc_examples.matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert doc_examples.matches(["eval in 5.8s"], ["eval in 61 s"])  # durations are not compared
    assert not doc_examples.matches(["a", "d"], ["a", "b", "d"])
    assert not doc_examples.matches(["top-1 84.60%"], ["top-1 84.50%"])
    assert not doc_examples.matches(["a", "...", "d"], ["a", "b", "c"])
    text = "```\n$ resnetlab train --out B \\\n    --quiet   # a comment\n$ resnetlab eval B\nline 1\nline 2\n```\n"
    assert list(doc_examples.examples(text)) == [("resnetlab train --out B --quiet", None, (3, 3)),
                                                 ("resnetlab eval B", ["line 1", "line 2"], (4, 6))]
