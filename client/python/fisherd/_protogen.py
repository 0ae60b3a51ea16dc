"""Generates the fisherd.v1 stubs (fisher_pb2.py, fisher_pb2_grpc.py) from proto/.

Used twice: by setup.py when the package is built or installed, and by
``fisherd.v1`` on import when the package runs from the source tree (PYTHONPATH)
and the stubs are missing or older than the proto. The tools are Debian's protoc and
grpc_python_plugin (package protobuf-compiler-grpc): python3-grpc-tools bundles a
protoc too old for proto3 ``optional``.

This module imports nothing from the package, so setup.py can load it by path.
"""
import os
import pathlib
import shutil
import subprocess
import tempfile

PROTO_FILE = "fisherd/v1/fisher.proto"
GENERATED = ("fisher_pb2.py", "fisher_pb2_grpc.py")


class StubGenerationError(RuntimeError):
    pass


def find_proto_root(start):
    """The directory holding fisherd/v1/fisher.proto: $FISHERD_PROTO_PATH, else the
    repository's proto/ found by walking up from `start`."""
    override = os.environ.get("FISHERD_PROTO_PATH")
    if override:
        root = pathlib.Path(override)
        if (root / PROTO_FILE).is_file():
            return root
        raise StubGenerationError(f"FISHERD_PROTO_PATH={override} has no {PROTO_FILE}")
    for directory in [pathlib.Path(start).resolve(), *pathlib.Path(start).resolve().parents]:
        candidate = directory / "proto"
        if (candidate / PROTO_FILE).is_file():
            return candidate
    return None


def _tool(name):
    path = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if path is None:
        raise StubGenerationError(
            f"{name} not found; install Debian's protobuf-compiler and protobuf-compiler-grpc")
    return path


def generate(proto_root, package_v1_dir):
    """Writes the two generated modules into `package_v1_dir` (the fisherd/v1 directory
    of the package), atomically file by file."""
    proto_root = pathlib.Path(proto_root)
    target = pathlib.Path(package_v1_dir)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fisherd-stubs-") as out:
        command = [
            _tool("protoc"), f"--proto_path={proto_root}", f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--plugin=protoc-gen-grpc_python={_tool('grpc_python_plugin')}",
            str(proto_root / PROTO_FILE),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise StubGenerationError(f"protoc failed: {result.stderr.strip()}")
        for name in GENERATED:
            source = pathlib.Path(out) / "fisherd" / "v1" / name
            with tempfile.NamedTemporaryFile("wb", dir=target, prefix=f".{name}.",
                                             delete=False) as staged:
                staged.write(source.read_bytes())
            os.replace(staged.name, target / name)


def stubs_current(package_v1_dir, proto_root):
    """True when both modules exist and none is older than the proto (when known)."""
    paths = [pathlib.Path(package_v1_dir) / name for name in GENERATED]
    if not all(p.is_file() for p in paths):
        return False
    if proto_root is None:
        return True
    proto_mtime = (pathlib.Path(proto_root) / PROTO_FILE).stat().st_mtime
    return all(p.stat().st_mtime >= proto_mtime for p in paths)
