"""Every JSON file the repository tracks parses (events, the OpenAPI document, examples).

python -m devtools.check_json [FILE ...]     # no FILE: every tracked *.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tracked_json() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "*.json", "*.json.example"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in names]


def main(argv: list[str]) -> int:
    failed = 0
    for path in [Path(arg) for arg in argv] or tracked_json():
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
