"""dtzoo imports where `fcntl` does not exist (Windows): locks go through filelock."""

import subprocess
import sys

# Every dtzoo module imports with fcntl unimportable, and a run lock still excludes a second
# holder (filelock's fallback where flock is missing).
NO_FCNTL = """
import importlib, pkgutil, sys, tempfile, warnings
from pathlib import Path
sys.modules["fcntl"] = None
warnings.simplefilter("ignore")
import dtzoo
for m in pkgutil.walk_packages(dtzoo.__path__, "dtzoo."):
    importlib.import_module(m.name)
from dtzoo.fsutil import LockBusy, file_lock
lock = Path(tempfile.mkdtemp()) / ".lock"
with file_lock(lock):
    try:
        with file_lock(lock, blocking=False):
            raise SystemExit("a held lock was taken twice")
    except LockBusy:
        pass
with file_lock(lock, blocking=False):
    pass
print("ok", len(list(pkgutil.walk_packages(dtzoo.__path__))))
"""


def test_dtzoo_imports_and_locks_without_fcntl():
    done = subprocess.run(
        [sys.executable, "-c", NO_FCNTL], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok ") and int(done.stdout.split()[1]) > 20
