"""The package as users get it: pip-installed into a venv (no network, Debian's
packages only), and from a source tree without stubs (generated on first import);
both run the README's example against the real server."""
import os
import re
import shutil
import subprocess
import sys

from conftest import REPO

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def readme_example(address):
    """The first ```python block of the README's "Python client" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python client"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "127.0.0.1:50051" in code
    return code.replace("127.0.0.1:50051", address)


def copy_tree(destination):
    """client/python and proto/ in the repository's layout, minus generated files."""
    ignore = shutil.ignore_patterns("*_pb2*.py", "__pycache__", "build", "*.egg-info")
    shutil.copytree(REPO / "client" / "python", destination / "client" / "python",
                    ignore=ignore)
    shutil.copytree(REPO / "proto", destination / "proto")
    return destination / "client" / "python"


def run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL")}
    env.update(extra)
    return env


def test_pip_install_into_a_venv(tmp_path, server):
    package = copy_tree(tmp_path / "src")
    venv = tmp_path / "venv"
    run([PYTHON, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--no-index", "--no-build-isolation", str(package)],
        cwd=tmp_path, env=clean_env(PIP_NO_INPUT="1"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run([python, "-c", "import fisherd, fisherd.v1.fisher_pb2 as pb; "
               "print(fisherd.__file__); print(pb.__file__)"], cwd=elsewhere, env=clean_env())
    assert all(str(venv) in line for line in out.split()), out
    script = elsewhere / "example.py"
    script.write_text(readme_example(server))
    assert "1000" in run([python, str(script)], cwd=elsewhere, env=clean_env())


def test_source_tree_generates_stubs_on_first_import(tmp_path, server):
    package = copy_tree(tmp_path / "src")
    assert not list(package.glob("fisherd/v1/*_pb2*.py"))
    script = tmp_path / "example.py"
    script.write_text(readme_example(server))
    out = run([PYTHON, str(script)], cwd=tmp_path, env=clean_env(PYTHONPATH=str(package)))
    assert "1000" in out
    assert sorted(p.name for p in package.glob("fisherd/v1/*_pb2*.py")) == [
        "fisher_pb2.py", "fisher_pb2_grpc.py"]


def test_unwritable_source_tree_uses_a_cache(tmp_path, server):
    package = copy_tree(tmp_path / "src")
    env = clean_env(PYTHONPATH=str(package), XDG_CACHE_HOME=str(tmp_path / "cache"))
    # os.access reports the package directory unwritable (root could write anyway).
    out = run([PYTHON, "-c", "import os; access = os.access; os.access = lambda p, m, **k: "
               "m != os.W_OK and access(p, m, **k); "
               "import fisherd.v1.fisher_pb2 as pb; print(pb.__file__)"], cwd=tmp_path, env=env)
    assert out.startswith(str(tmp_path / "cache" / "fisherd" / "stubs")), out
    assert not list(package.glob("fisherd/v1/*_pb2*.py"))
