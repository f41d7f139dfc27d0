"""Cut the demo corpus: a curated excerpt of the Python 3.11 docs' reST sources.

Source: Debian's package python3.11-doc (PSF License), which holds the sources under
/usr/share/doc/python3.11/html/_sources/. Re-run to regenerate
examples/python-docs/docs/ (kept under 1.5 MB):

    apt-get install python3.11-doc && python scripts/cut_python_docs.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

SOURCE = Path("/usr/share/doc/python3.11/html/_sources")
# The FAQ (question/answer pairs for SFT and evaluation), the tutorial, and the
# library pages the FAQ answers point at most often.
SELECTION = [
    "faq/general.rst.txt",
    "faq/programming.rst.txt",
    "faq/design.rst.txt",
    "faq/library.rst.txt",
    "faq/extending.rst.txt",
    "faq/windows.rst.txt",
    "faq/gui.rst.txt",
    "faq/installed.rst.txt",
    "tutorial/*.rst.txt",
    "library/shutil.rst.txt",
    "library/os.path.rst.txt",
    "library/pathlib.rst.txt",
    "library/json.rst.txt",
    "library/csv.rst.txt",
    "library/glob.rst.txt",
    "library/tempfile.rst.txt",
    "library/functions.rst.txt",
    "library/stdtypes.rst.txt",
    "library/exceptions.rst.txt",
    "library/random.rst.txt",
    "library/collections.rst.txt",
]
LIMIT_BYTES = 1_500_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "examples/python-docs")
    args = parser.parse_args()
    if not args.source.is_dir():
        print(f"error: {args.source} not found; install Debian's python3.11-doc", file=sys.stderr)
        return 2
    docs = args.out / "docs"
    if docs.exists():
        shutil.rmtree(docs)
    total = 0
    for pattern in SELECTION:
        for src in sorted(args.source.glob(pattern)):
            rel = src.relative_to(args.source).as_posix().removesuffix(".txt")
            dst = docs / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            total += dst.stat().st_size
    shutil.copyfile(args.source / "license.rst.txt", args.out / "LICENSE-PSF.rst")
    if total > LIMIT_BYTES:
        print(f"error: excerpt is {total} bytes, over the {LIMIT_BYTES} limit; trim SELECTION", file=sys.stderr)
        return 1
    print(f"wrote {total} bytes of docs to {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
