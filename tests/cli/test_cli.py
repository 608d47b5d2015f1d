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


# ------------------------------------------------------------------ defects found as a new user (issue 20)


def test_outputs_honour_the_umask(tmp_path):
    import os

    from rcnn_cli.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_an_output_path_under_a_regular_file_is_one_line(tmp_path, capsys):
    from rcnn_cli.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    img = tmp_path / "im.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    with pytest.raises(SystemExit) as e:
        main(["propose", str(img), "--out", str(blocker / "p.h5"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "internal error" not in err and len(err.strip().splitlines()) == 1


def test_every_option_of_every_command_says_what_it_does():
    import typer.main

    from rcnn_cli.cli.app import app

    def commands(group, path=()):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from commands(cmd, path + (name,))
            else:
                yield path + (name,), cmd

    missing = [f"{' '.join(path)} {p.opts[0]}" for path, cmd in commands(typer.main.get_command(app))
               for p in cmd.params if getattr(p, "param_type_name", "") == "option" and not p.help]
    assert missing == []


def test_evaluate_json_dash_goes_to_stdout(tmp_path, capsys, monkeypatch):
    from rcnn_cli.data.shapes import make_shapes

    root = make_shapes(tmp_path / "d", train=1, test=2, size=64, seed=0)
    dets = tmp_path / "dets.jsonl"
    dets.write_text("".join(json.dumps({"image_id": f"test_{k:05d}", "detections": []}) + "\n" for k in range(2)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(root), "--split", "test", "--detections", str(dets), "--json", "-"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert json.loads(out)["mAP"] == 0.0  # stdout holds the JSON alone; the table went to stderr
    assert not (tmp_path / "-").exists() and not (tmp_path / "-.config.json").exists()


def test_extract_features_with_proposals_of_other_images_is_an_error(tmp_path, capsys):
    from rcnn_cli.data.inputs import ImageInput
    from rcnn_cli.data.shapes import make_shapes
    from rcnn_cli.proposals import ProposalConfig, run_propose

    root = make_shapes(tmp_path / "d", train=2, test=1, size=64, seed=0)
    other = tmp_path / "other.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(other)
    props = tmp_path / "p.h5"
    run_propose([ImageInput("elsewhere", other)], props, ProposalConfig(method="sliding-window"), progress=False,
                workers=1)
    out = tmp_path / "f.h5"
    with pytest.raises(SystemExit) as e:
        main(["extract-features", str(root), "--split", "trainval", "--proposals", str(props), "--out", str(out),
              "--no-progress", "--device", "cpu", "--warp-size", "32", "--padding", "3"])
    assert e.value.code == 2 and "none of the 2 images" in capsys.readouterr().err
    assert not out.exists()


def _commands(group, prefix=()):
    import click

    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


def test_every_help_reads_at_80_columns_and_short_flags_mean_one_thing(monkeypatch, capsys):
    """No option name or word cut (no '…'), no line past 80 columns; a short flag is one long option everywhere."""
    import typer

    from rcnn_cli.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    meaning: dict[str, set[str]] = {}
    root = typer.main.get_command(app)
    for path in _commands(root):
        with pytest.raises(SystemExit):
            main([*path, "--help"])
        text = capsys.readouterr().out
        assert "…" not in text, path
        assert max(len(line) for line in text.splitlines()) <= 80, path
        cmd = root
        for part in path:
            cmd = cmd.commands[part]
        for param in cmd.params:
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts if len(o) == 2 and o[0] == "-"):
                meaning.setdefault(short, set()).update(longs)
    shared = {k: v for k, v in meaning.items() if len(v) > 1 and k not in ("-h",)}
    assert not shared, shared


def test_the_command_listing_is_each_commands_own_help():
    """``rcnn --help`` lists COMMANDS without importing them: each line is the command's own first help line,
    and every command is listed."""
    import inspect

    import typer.main

    from rcnn_cli.cli.app import COMMANDS, app

    root = typer.main.get_command(app)
    assert set(root.commands) == set(COMMANDS)
    for name, (_, line) in COMMANDS.items():
        cmd = root.commands[name]
        own = cmd.help if cmd.help else inspect.getdoc(cmd.callback)
        assert " ".join(own.split("\n\n")[0].split()) == line, name


def test_help_and_version_start_without_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom rcnn_cli.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"
