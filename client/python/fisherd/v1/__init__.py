"""fisherd.v1: the generated stubs of proto/fisherd/v1/fisher.proto.

`fisher_pb2` (messages) and `fisher_pb2_grpc` (FisherServiceStub) are generated, not
committed: by setup.py when the package is installed, or here on first import when the
package is used from the source tree (PYTHONPATH=client/python) and they are missing or
older than the proto. If this directory is not writable the stubs go to a cache directory
(``$XDG_CACHE_HOME/fisherd/stubs/<proto hash>``) that is added to this package's search path.
"""
import hashlib
import os
import pathlib

from fisherd import _protogen

_here = pathlib.Path(__file__).resolve().parent


def _ensure_stubs():
    # Only a source tree (client/python/setup.py above us) looks for the repository's
    # proto; an installed package uses the stubs it was built with.
    source_tree = (_here.parents[1] / "setup.py").is_file()
    proto_root = (_protogen.find_proto_root(_here.parents[1])
                  if source_tree or os.environ.get("FISHERD_PROTO_PATH") else None)
    if _protogen.stubs_current(_here, proto_root):
        return
    if proto_root is None:
        raise ImportError(
            "fisherd.v1 stubs are missing and proto/fisherd/v1/fisher.proto was not found; "
            "install the package (pip install client/python) or set FISHERD_PROTO_PATH")
    if os.access(_here, os.W_OK):
        _protogen.generate(proto_root, _here)
        return
    # One directory per proto content, so checkouts of different versions never mix.
    digest = hashlib.sha256((proto_root / _protogen.PROTO_FILE).read_bytes()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    cache = cache / "fisherd" / "stubs" / digest / "fisherd" / "v1"
    if not _protogen.stubs_current(cache, proto_root):
        _protogen.generate(proto_root, cache)
    __path__.insert(0, str(cache))


_ensure_stubs()
