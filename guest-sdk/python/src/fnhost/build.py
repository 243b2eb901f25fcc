"""``fnhost-py``: build a WebAssembly component from a Python function, without the host.

    fnhost-py build session.py --classname session.SessionDuration -o session.wasm

The component is what ``fnhost localrun --py`` builds and runs; ``--wasm session.wasm`` runs it
as it is. The build needs componentize-py, which ``pip install "fnhost[build]"`` brings.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SDK_FILES = ("__init__.py", "_component.py")
ENTRY_MODULE = "fnhost_main"


def stage(source: Path, classname: str, into: Path) -> None:
    """Lays out a build directory: the function's folder, the SDK, the WIT and the entry module."""
    app = into / "app"
    app.mkdir()
    for sibling in source.resolve().parent.glob("*.py"):
        shutil.copyfile(sibling, app / sibling.name)
    sdk = into / "sdk"
    (sdk / "fnhost").mkdir(parents=True)
    for name in _SDK_FILES:
        shutil.copyfile(_PACKAGE / name, sdk / "fnhost" / name)
    shutil.copyfile(_PACKAGE / "pulsar.py", sdk / "pulsar.py")
    (into / "wit").mkdir()
    shutil.copyfile(_PACKAGE / "wit" / "function.wit", into / "wit" / "function.wit")
    (into / f"{ENTRY_MODULE}.py").write_text(
        f"import fnhost._component\nWitWorld = fnhost._component.world({classname!r})\n"
    )


def build(source: Path, classname: str, output: Path) -> None:
    """Builds ``source``'s function ``classname`` into the component ``output``."""
    with tempfile.TemporaryDirectory(prefix="fnhost-py-") as scratch:
        root = Path(scratch)
        stage(source, classname, root)
        command = [
            "componentize-py", "-d", str(root / "wit"), "-w", "function", "componentize",
            "-p", str(root / "app"), "-p", str(root / "sdk"), "-p", str(root),
            ENTRY_MODULE, "-o", str(output.resolve()),
        ]
        subprocess.run(command, check=True)


def main() -> int:
    """The console command."""
    parser = argparse.ArgumentParser(prog="fnhost-py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser("build", help="build a component from a Python function")
    build_command.add_argument("file", type=Path, help="the function's module, for example session.py")
    build_command.add_argument("--classname", required=True, help="MODULE.CLASS, as in pulsar-admin")
    build_command.add_argument("-o", "--output", type=Path, required=True, help="the component to write")
    args = parser.parse_args()
    if not args.file.is_file():
        parser.error(f"{args.file} is not a file; give the function's .py module")
    try:
        build(args.file, args.classname, args.output)
    except FileNotFoundError:
        print("fnhost-py: componentize-py is not installed; run: pip install './guest-sdk/python[build]' (or componentize-py==0.25.1)", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as failed:
        print(f"fnhost-py: componentize-py failed (exit {failed.returncode}); see its message above", file=sys.stderr)
        return 1
    print(f"built {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
