"""The ``rcnn`` console script: a Ctrl-C while the package starts (imports) is one line, not a traceback."""

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:  # answered before the command-line interface is imported
        from rcnn_cli import __version__

        print(f"rcnn {__version__}")
        return
    try:
        from rcnn_cli.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting: nothing was done\n")
        sys.exit(130)
    cli_main()
