"""Print every function whose body (docstring excluded) is longer than --over lines; exit 1 when
any is longer than --max. Usage: python scripts/function_lengths.py [--over 60] [--max 100] src"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def body_lengths(root: Path) -> list[tuple[int, str]]:
    """``(lines, "path:line name")`` of every function under ``root``."""
    rows = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                first = body[1] if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str) else body[0]
                rows.append((node.end_lineno - first.lineno + 1, f"{path}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", nargs="?", default="src")
    ap.add_argument("--over", type=int, default=60, help="list functions longer than this")
    ap.add_argument("--max", type=int, default=100, help="fail when a function is longer than this")
    args = ap.parse_args()
    rows = body_lengths(Path(args.root))
    listed = [r for r in rows if r[0] > args.over]
    print(f"{'lines':>5}  function")
    for n, where in listed:
        print(f"{n:>5}  {where}")
    too_long = [r for r in rows if r[0] > args.max]
    print(f"{len(listed)} functions over {args.over} lines, {len(too_long)} over {args.max}")
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
