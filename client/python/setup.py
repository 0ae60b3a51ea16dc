"""Builds the `fisherd` Python client; generates its gRPC stubs from proto/ on build.

    /usr/bin/python3 -m pip install --no-index --no-build-isolation client/python

(see the repository README for the venv / --break-system-packages variants).
"""
import importlib.util
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent


def _protogen():
    spec = importlib.util.spec_from_file_location("_protogen", HERE / "fisherd" / "_protogen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    """build_py, then protoc + grpc_python_plugin into build_lib/fisherd/v1."""

    def run(self):
        super().run()
        protogen = _protogen()
        proto_root = protogen.find_proto_root(HERE)
        if proto_root is None:
            raise SystemExit("proto/fisherd/v1/fisher.proto not found above "
                             f"{HERE}; set FISHERD_PROTO_PATH to the proto/ directory")
        protogen.generate(proto_root, pathlib.Path(self.build_lib) / "fisherd" / "v1")


setup(cmdclass={"build_py": BuildPyWithStubs})
