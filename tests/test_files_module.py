"""library/bulkrelay_files run by ansible on localhost: 0, 1 and 2 files written once, then
nothing; only what differs (content, mode, group) rewritten, each with its own diff; check mode
writes nothing; a bad mode or a missing folder is a one-line failure; a file that is not UTF-8
is rewritten, not a traceback."""

import grp
import os
import pwd
import stat

import pytest
from conftest import run_module

ME = {"owner": pwd.getpwuid(os.getuid()).pw_name, "group": grp.getgrgid(os.getgid()).gr_name}


def write(files, check=False, **args):
    result = run_module("bulkrelay_files", {"files": files, **ME, **args}, check=check, diff=True)
    assert not result.get("failed"), result.get("msg")
    return result


def state(paths):
    return {
        p.name: (p.read_text(), stat.S_IMODE(p.stat().st_mode), p.stat().st_gid) for p in paths if p.exists()
    }


@pytest.mark.parametrize("count", [0, 1, 2])
def test_writes_each_file_once(tmp_path, count):
    paths = [tmp_path / f"table{i}" for i in range(count)]
    files = [{"dest": str(p), "content": f"key{i} value\n"} for i, p in enumerate(paths)]
    first = write(files, mode="0640")
    assert first["changed"] is (count > 0)
    assert first["files_changed"] == [str(p) for p in paths]
    assert [d["after"] for d in first["diff"]] == [f["content"] for f in files]
    assert {name: mode for name, (_, mode, _) in state(paths).items()} == {p.name: 0o640 for p in paths}
    again = write(files, mode="0640")
    assert again["changed"] is False and again["files_changed"] == [] and again["diff"] == []


def test_rewrites_only_what_differs_and_check_mode_writes_nothing(tmp_path):
    paths = [tmp_path / name for name in ("transport", "virtual", "tls_policy")]
    files = [{"dest": str(p), "content": f"{p.name} table\n"} for p in paths]
    write(files)
    good = state(paths)
    paths[0].write_text("edited by hand\n")
    paths[1].chmod(0o600)
    if os.getuid() == 0:
        os.chown(paths[2], -1, grp.getgrnam("nogroup").gr_gid)
    edited = state(paths)
    for check in (True, False):
        result = write(files, check=check)
        assert result["changed"] is True
        assert result["files_changed"] == [str(p) for p in paths[: 3 if os.getuid() == 0 else 2]]
        content, mode = result["diff"][:2]
        assert content["before"] == "edited by hand\n" and content["after"] == "transport table\n"
        assert mode["before"] == {"mode": "0600", **ME} and mode["after"] == {"mode": "0644", **ME}
        if os.getuid() == 0:
            assert result["diff"][2]["before"]["group"] == "nogroup"
        assert state(paths) == (edited if check else good)
    assert write(files)["changed"] is False


def test_check_mode_on_a_new_file_writes_nothing(tmp_path):
    result = write([{"dest": str(tmp_path / "new"), "content": "x\n"}], check=True)
    assert result["changed"] is True and result["diff"][0]["before"] == ""
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"mode": "rw-r--r--"}, "is not octal"),
        ({"files": [{"dest": "/nonexistent-folder/x", "content": ""}]}, "No such file or directory"),
        ({"group": "no-such-group-here"}, "name not found"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, words):
    full = {"files": [{"dest": str(tmp_path / "x"), "content": "x\n"}], **ME, **args}
    result = run_module("bulkrelay_files", full)
    assert result.get("failed") and words in result["msg"] and "\n" not in result["msg"]
    assert "Traceback" not in str(result)


def test_a_file_in_another_encoding_is_rewritten(tmp_path):
    path = tmp_path / "virtual"
    path.write_bytes(b"caf\xe9 latin-1\n")  # not UTF-8: left by hand or by another tool
    result = write([{"dest": str(path), "content": "café\n"}], mode="0644")
    assert result["files_changed"] == [str(path)] and result["diff"][0]["before"] == "caf\ufffd latin-1\n"
    assert path.read_text(encoding="utf-8") == "café\n"
    assert write([{"dest": str(path), "content": "café\n"}], mode="0644")["changed"] is False
