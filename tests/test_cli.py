import json
import subprocess
import sys

import pytest

from rcnn_cli import __version__
from rcnn_cli.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"rcnn {__version__}"


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = run(["data", "info", str(tmp_path / "missing")], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "dataset not found" in lines[0] and "Traceback" not in err


def test_usage_errors_exit_2_without_internal_error(capsys):
    code, _, err = run(["evaluate", "--bogus"], capsys)
    assert code == 2 and "No such option: --bogus" in err and "internal error" not in err
    code, _, err = run(["evaluate"], capsys)
    assert code == 2 and "Missing argument" in err


def test_data_info_json_and_make_shapes(tmp_path, capsys):
    code, _, _ = run(["data", "make-shapes", str(tmp_path / "s"), "--train", "3", "--test", "2", "--size", "96"], capsys)
    assert code == 0
    assert (tmp_path / "s" / "config.json").exists()
    code, out, _ = run(["data", "info", str(tmp_path / "s"), "--split", "trainval", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["num_images"] == 3 and info["image_sizes"] == {"96x96": 3}


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "rcnn_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"rcnn {__version__}"
