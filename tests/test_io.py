"""Atomic writes: a crashed writer's temp file is removed by the next write, a live one's is not."""
import os
import subprocess
import sys

from lazydit.io import write_json


def test_orphaned_temp_files_are_cleaned_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".tmp-{int(dead.stdout)}-abc.json"
    live = tmp_path / f".tmp-{os.getpid()}-xyz.json"  # this process: maybe mid-write, keep it
    orphan.write_text("half")
    live.write_text("half")
    write_json(str(tmp_path / "out.json"), {"a": 1})
    assert not orphan.exists() and live.exists()
    assert (tmp_path / "out.json").read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", live.name])
