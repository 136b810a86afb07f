"""The ``resnetlab`` command: one subcommand per feature, each implemented by its module's ``main(argv)``.

Subcommands are imported only when used, so ``resnetlab --help`` answers at once, without torch.
"""
from __future__ import annotations

import importlib
import os
import sys

# name -> (module, summary). The module's ``main_<name>(argv: list[str]) -> int`` runs the command.
COMMANDS = {
    "demo": ("resnetlab.study", "the main job: a small offline shortcut study with its report"),
    "summary": ("resnetlab.summary", "layer-by-layer table of shapes, kernels, shortcuts, params, MACs"),
    "models": ("resnetlab.summary", "list the registered models"),
    "train": ("resnetlab.train", "train a model (the paper's CIFAR recipe or modern options)"),
    "eval": ("resnetlab.evaluate_cli", "evaluate checkpoints: top-1/top-5, per class, confusion, ensembles"),
    "predict": ("resnetlab.evaluate_cli", "top-k classes for image files"),
    "study": ("resnetlab.study", "plain vs residual, option A vs B vs C: train a grid, write a report"),
    "analyze": ("resnetlab.analysis", "paths / gradients / responses of a model or checkpoint"),
    "landscape": ("resnetlab.landscape", "1-D and 2-D filter-normalised loss landscapes"),
}


def _usage() -> str:
    lines = ["usage: resnetlab COMMAND [options]   (resnetlab COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv else ""
    try:
        if not argv:
            print(_usage(), file=sys.stderr)
            return 2
        if name in ("-h", "--help", "help"):
            print(_usage())
            return 0
        if name in ("-V", "--version"):
            from . import __version__
            print(f"resnetlab {__version__}")
            return 0
        if name not in COMMANDS:
            print(f"resnetlab: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        module = importlib.import_module(COMMANDS[name][0])
        return int(getattr(module, f"main_{name}")(argv[1:]) or 0)
    except SystemExit as e:  # argparse: --help (0) or a bad flag (2, message already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BrokenPipeError:  # the reader went away, e.g. `resnetlab summary resnet152 | head`
        # point stdout at /dev/null so that the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        print(f"resnetlab {name}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, no traceback
        print(f"resnetlab {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk or the system refused: one line naming the path
        where = f": {e.filename}" if e.filename else ""
        print(f"resnetlab {name}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
