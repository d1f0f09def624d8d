"""Where the generators' weights live, and how to bring back those that left the working tree.

    python -m training.weights list                 # every published run: in the tree or archived, sha256, commit
    python -m training.weights restore NAME [...]   # git show COMMIT:weights/NAME/generator.pt, sha256-checked
    python -m training.weights archive NAME [...]   # record NAME's weights in the archive, then drop the file

The working tree keeps only the weights that something running needs: the source of the shipped model and
the starting point of the current recipe. Every other run keeps its config, log and run record under
``weights/NAME/`` and its scores under ``results/eval/``; its ``generator.pt`` stays in the git history, named
by sha256 and by a commit that holds it in ``results/weights.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from training.models import sha256_of

log = logging.getLogger("training.weights")

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "results" / "weights.json"


def weights_path(name: str, root: Path = ROOT) -> Path:
    return root / "weights" / name / "generator.pt"


def read_archive(path: Path = ARCHIVE) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.exists() else {}


def restore_command(name: str) -> str:
    return f"python -m training.weights restore {name}"


def git(root: Path, *args: str, binary: bool = False) -> bytes | str:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True)
    if result.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.decode().strip()}")
    return result.stdout if binary else result.stdout.decode().strip()


def archive(name: str, root: Path = ROOT, archive_path: Path = ARCHIVE) -> dict:
    """Record NAME's committed weights (sha256 and the last commit that wrote them) and delete the file."""
    path = weights_path(name, root)
    relative = path.relative_to(root).as_posix()
    if git(root, "status", "--porcelain", "--", relative):
        raise RuntimeError(f"{relative} differs from the committed file: commit it before archiving")
    commit = git(root, "log", "-1", "--format=%H", "--", relative)
    if not commit:
        raise RuntimeError(f"{relative} was never committed: nothing in the history to restore it from")
    entry = {"path": relative, "sha256": sha256_of(path), "commit": commit, "bytes": path.stat().st_size}
    records = read_archive(archive_path)
    records[name] = entry
    archive_path.write_text(json.dumps(dict(sorted(records.items())), indent=1) + "\n")
    path.unlink()
    log.info("%s archived: sha256 %s, held by commit %s", name, entry["sha256"][:12], commit[:12])
    return entry


def restore(name: str, root: Path = ROOT, archive_path: Path = ARCHIVE, out: Path | None = None) -> Path:
    """Write NAME's archived weights back (to ``out``, by default their place in the tree), sha256-checked."""
    records = read_archive(archive_path)
    if name not in records:
        raise KeyError(f"no archived weights named {name!r}; archived: {', '.join(sorted(records)) or 'none'}")
    entry = records[name]
    target = out or root / entry["path"]
    if target.exists() and sha256_of(target) == entry["sha256"]:
        log.info("%s is already in place: %s", name, target)
        return target
    try:
        data = git(root, "show", f"{entry['commit']}:{entry['path']}", binary=True)
    except RuntimeError as error:
        raise RuntimeError(f"cannot read {entry['path']} at commit {entry['commit']} (a shallow clone lacks "
                           f"it: git fetch --unshallow): {error}") from None
    temporary = target.with_name(target.name + ".tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(data)
    if sha256_of(temporary) != entry["sha256"]:
        temporary.unlink()
        raise RuntimeError(f"{entry['path']} at commit {entry['commit']} does not have sha256 {entry['sha256']}")
    temporary.replace(target)
    log.info("%s restored to %s (sha256 %s)", name, target, entry["sha256"][:12])
    return target


def listing(root: Path = ROOT, archive_path: Path = ARCHIVE) -> list[str]:
    records = read_archive(archive_path)
    names = sorted({p.parent.name for p in (root / "weights").glob("*/generator.pt")} | set(records))
    lines = []
    for name in names:
        path = weights_path(name, root)
        if path.exists():
            lines.append(f"{name}\tin the tree\t{sha256_of(path)}")
        else:
            entry = records[name]
            lines.append(f"{name}\tarchived at {entry['commit'][:12]}\t{entry['sha256']}\t{restore_command(name)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every run's weights: in the tree or archived")
    for command in ("restore", "archive"):
        sub = commands.add_parser(command)
        sub.add_argument("names", nargs="+", metavar="NAME")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        sys.stdout.write("".join(line + "\n" for line in listing()))
        return 0
    action = restore if args.command == "restore" else archive
    try:
        for name in args.names:
            action(name)
    except (KeyError, RuntimeError, FileNotFoundError) as error:
        log.error("%s", error.args[0] if isinstance(error, KeyError) else error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
