"""``make demo``: a secondary on 127.0.0.1, a primary mounted over a fresh
store, files written, the link cut, more files written, the link restored
and the replica resynced, ``fsrep status`` shown, both trees verified
identical (contents, modes, owners, xattrs, and the mtimes of files,
directories and symlinks to the nanosecond), everything unmounted and
removed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._digest import tree_differences

FSREP = [sys.executable, "-m", "fsrep"]


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def fsrep(*args: str) -> str:
    print("$ fsrep " + " ".join(args), flush=True)
    done = subprocess.run([*FSREP, *args], capture_output=True, text=True, timeout=300)
    if done.stdout:
        print(done.stdout.rstrip(), flush=True)
    if done.returncode != 0:
        raise SystemExit(f"demo failed: fsrep {args[0]}: {done.stderr.strip()}")
    return done.stdout


def state(mnt: Path) -> dict:
    done = subprocess.run([*FSREP, "status", str(mnt), "--json"], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)["groups"][0]


def wait_for(what: str, predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo failed: timed out waiting for {what}")
        time.sleep(0.1)


def start_secondary(store: Path, key: Path, port: int = 0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*FSREP, "serve", str(store), "--listen", f"127.0.0.1:{port}", "--key-file", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on"):
        proc.kill()
        raise SystemExit(f"demo failed: the secondary did not start; see {store}/.fsrep/serve.log")
    print(f"secondary: {line}", flush=True)
    return proc, int(line.rsplit(":", 1)[1])


def write_files(root: Path, tag: str, count: int) -> None:
    (root / tag).mkdir()
    for i in range(count):
        (root / tag / f"file{i:03d}.bin").write_bytes(os.urandom(1024 * (i + 1)))
    (root / tag / "notes.txt").write_text(f"written {tag}\n")
    os.symlink("notes.txt", root / tag / "latest")


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="fsrep-demo-", dir="/var/tmp"))
    primary, secondary_store, mnt, key = base / "primary", base / "secondary", base / "mnt", base / "key"
    for d in (primary, secondary_store, mnt):
        d.mkdir()
    secondary = None
    mounted = False
    try:
        say(f"a key, a secondary on 127.0.0.1 and a primary mounted at {mnt}")
        fsrep("keygen", str(key))
        secondary, port = start_secondary(secondary_store, key)
        fsrep("mount", str(primary), str(mnt), "--secondary", f"127.0.0.1:{port}", "--key-file", str(key))
        mounted = True

        say("writing files through the mount: each write returns once both sides applied it")
        write_files(mnt, "before-cut", 50)
        fsrep("status", str(mnt))

        say("cutting the link (the secondary stops) and writing more")
        secondary.send_signal(signal.SIGTERM)
        secondary.wait(timeout=30)
        write_files(mnt, "while-cut", 30)
        os.rename(mnt / "before-cut" / "file000.bin", mnt / "while-cut" / "moved.bin")
        (mnt / "before-cut" / "file001.bin").unlink()
        with open(mnt / "before-cut" / "file049.bin", "r+b") as f:  # 50 KiB file: rewrite one 4 KiB region
            f.seek(8192)
            f.write(os.urandom(4096))
        wait_for("OutOfSync", lambda: state(mnt)["state"] == "OutOfSync")
        fsrep("status", str(mnt))

        say("restoring the link: the primary reconnects and resyncs the stale replica by itself")
        secondary, port = start_secondary(secondary_store, key, port)
        wait_for("InSync", lambda: state(mnt)["state"] == "InSync")
        fsrep("status", str(mnt))
        group = state(mnt)
        print(f"the resync sent {group['resync_bytes_sent']} bytes in {group['last_resync_seconds']:.2f}s: only "
              f"what changed while the link was down", flush=True)
        (mnt / "after-resync.txt").write_text("replicated again\n")

        say("verifying the replica region by region: fsrep-resync --mode checksum")
        verify = subprocess.run([sys.executable, "-m", "tools.resync", str(mnt), "--mode", "checksum"], timeout=300)
        if verify.returncode != 0:
            raise SystemExit("demo failed: the checksum resync did not end InSync")

        say("unmounting and comparing both trees by digest")
        fsrep("umount", str(mnt))
        mounted = False
        replica = next(p for p in secondary_store.iterdir() if p.name != ".fsrep")
        differences = tree_differences(primary, replica)
        if differences:
            print("\n".join(differences))
            raise SystemExit("demo failed: the trees differ")
        count = sum(1 for _ in primary.rglob("*")) - sum(1 for _ in (primary / ".fsrep").rglob("*")) - 1
        print(f"primary store and replica are identical ({count} entries: contents, modes, owners, xattrs, "
              f"and mtimes to the nanosecond)", flush=True)
        for path in ("before-cut/file049.bin", "while-cut", "while-cut/latest"):  # rewritten, made, linked while cut
            print(f"  mtime of {path}: primary {os.lstat(primary / path).st_mtime_ns}, "
                  f"replica {os.lstat(replica / path).st_mtime_ns}", flush=True)
        return 0
    finally:
        if mounted:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if secondary is not None and secondary.poll() is None:
            secondary.send_signal(signal.SIGTERM)
            secondary.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
        print(f"\ncleaned up {base}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
