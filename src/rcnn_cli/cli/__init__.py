"""Command-line interface: parses arguments and calls the library; nothing else lives here.

User errors (:class:`rcnn_cli.errors.UserError`) print one line and exit with code 2.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from rcnn_cli.cli.app import app, state
from rcnn_cli.errors import Interrupted, UserError
from rcnn_cli.log import console


def _exception_types(name: str) -> tuple[type, ...]:
    """``name`` from click and from typer's own copy of click (typer >= 0.26 no longer uses click's classes)."""
    modules = [click.exceptions]
    for mod in ("typer._click.exceptions", "typer.exceptions"):
        try:
            modules.append(importlib.import_module(mod))
        except ImportError:
            pass
    return tuple({t for m in modules if isinstance(t := getattr(m, name, None), type)})


_ABORT = _exception_types("Abort")
_CLICK_ERROR = _exception_types("ClickException")


def _interrupted(e: BaseException, argv: list[str] | None) -> str:
    """The one line after Ctrl-C: what was kept and, for a resumable run, the command that goes on."""
    import shlex

    if not isinstance(e, Interrupted):
        return "finished work is kept; rerun the same command to resume."
    if not e.resumable:
        return e.message
    args = list(sys.argv[1:] if argv is None else argv)
    return f"{e.message}; resume with: {shlex.join(['rcnn', *args, *([] if '--resume' in args else ['--resume'])])}"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rcnn`` console script."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="rcnn")
    except UserError as e:
        if state["verbose"]:
            console.print_exception()
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as e:
        console.print(f"[yellow]interrupted[/]: {_interrupted(e, argv)}", highlight=False, soft_wrap=True)
        sys.exit(130)
    except (KeyboardInterrupt, *_ABORT) as e:
        console.print(f"[yellow]interrupted[/]: {_interrupted(e, argv)}", highlight=False, soft_wrap=True)
        sys.exit(130)
    except _CLICK_ERROR as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:  # e.g. `rcnn detect ... | head`
        sys.stderr.close()
        sys.exit(0)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:  # a path the user gave
        where = e.filename or ""
        console.print(f"[bold red]error:[/] {where}: {e.strerror or e} (check the output path)", highlight=False,
                      soft_wrap=True)
        sys.exit(2)
    except Exception as e:  # a bug, not a user error: one line unless --verbose
        if state["verbose"]:
            traceback.print_exc()
        else:
            console.print(f"[bold red]internal error:[/] {type(e).__name__}: {e} (rerun with --verbose for the traceback)",
                          highlight=False, soft_wrap=True)
        sys.exit(1)
    if code == 130:  # typer's answer to a Ctrl-C that no stage handled
        console.print(f"[yellow]interrupted[/]: {_interrupted(KeyboardInterrupt(), argv)}", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)
