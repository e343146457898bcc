"""Write several files in one module run (each module run costs a round trip and a Python start
on the host; a template task costs two even when nothing changes): each file only when its
content or its owner, group and mode differ, with one diff per changed file, nothing written in
check mode. Used by bulkrelay_files (on the relay) and bulkrelay_dns_records (on the controller).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tempfile


def _attributes(st: os.stat_result, owner: str | None, group: str | None) -> dict:
    """The attributes that are compared, as a diff shows them."""
    attrs = {"mode": f"{stat.S_IMODE(st.st_mode):04o}"}
    if owner is not None:
        attrs["owner"] = _name(pwd.getpwuid, st.st_uid)
    if group is not None:
        attrs["group"] = _name(grp.getgrgid, st.st_gid)
    return attrs


def _name(lookup, number: int) -> str:
    """The user or group name of ``number``; the number itself when it has none."""
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def write_files(module, files: dict, mode: int, owner: str | None = None, group: str | None = None):
    """Write each path -> text of ``files`` where it differs; returns the paths changed (or, in
    check mode, that would be) and one diff per changed file: the text when it differs, else
    the attributes (mode, and owner and group when given)."""
    want = {
        "mode": f"{mode:04o}",
        **({"owner": owner} if owner else {}),
        **({"group": group} if group else {}),
    }
    changed, diffs = [], []
    for path, text in files.items():
        try:
            # bytes: a file someone left in another encoding is rewritten, not a traceback
            with open(path, "rb") as f:
                before, attrs = f.read(), _attributes(os.fstat(f.fileno()), owner, group)
        except FileNotFoundError:
            before, attrs = None, None
        if before == text.encode("utf-8") and attrs == want:
            continue
        changed.append(path)
        diff = {"before_header": path, "after_header": path}
        if before == text.encode("utf-8"):
            diffs.append({**diff, "before": attrs, "after": want})
        else:
            shown = (before or b"").decode("utf-8", errors="replace")
            diffs.append({**diff, "before": shown, "after": text})
        if module.check_mode:
            continue
        # a temporary file renamed over the old one: a crash leaves the old file or the new, never half
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            # looked up here, not before: in check mode on a new host the group may not exist yet
            uid = pwd.getpwnam(owner).pw_uid if owner is not None else -1
            gid = grp.getgrnam(group).gr_gid if group is not None else -1
            os.chown(tmp, uid, gid)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return changed, diffs
