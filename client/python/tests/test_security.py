"""Bearer tokens and (mutual) TLS against the real fisherd: its --auth-token-file,
--tls-cert, --tls-key and --tls-client-ca flags, with certificates made by openssl (a
test dependency, scripts/install-deps.sh: without it these tests fail, not skip)."""
import shutil
import subprocess

import grpc
import numpy as np
import pytest

import fisherd
from conftest import start_fisherd, stop_fisherd


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    assert shutil.which("openssl"), "openssl is needed to make the test certificates"
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=fisherd test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN=fisherd test {name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                f"{name}.ext")
    return {p.name: p.read_bytes() for p in d.iterdir()} | {"dir": d}


def test_bearer_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("correct-horse\n")
    process, address = start_fisherd(f"--auth-token-file={token_file}")
    try:
        for token in (None, "wrong"):
            with fisherd.Client(address, token=token) as c:
                with pytest.raises(fisherd.FisherdError) as error:
                    c.list_sessions()
                assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
        with fisherd.Client(address, token="correct-horse") as c:
            name = c.create_session("tok", 3)
            ack = c.stream_scores(name, np.eye(3), worker_id="w")
            assert ack.sample_count == 3
            assert c.step(name, [1.0, 2.0, 3.0], kl_budget=0.1).eta > 0
    finally:
        stop_fisherd(process)


def test_tls_and_mutual_tls(pki):
    d = pki["dir"]
    process, address = start_fisherd(f"--tls-cert={d / 'server.pem'}",
                                      f"--tls-key={d / 'server.key'}")
    try:
        with fisherd.Client(address, root_certificates=pki["ca.pem"]) as c:
            name = c.create_session("tls", 2)
            assert c.stream_scores(name, np.ones((5, 2))).sample_count == 5
        with fisherd.Client(address, timeout=5) as plaintext:
            with pytest.raises(fisherd.FisherdError) as error:
                plaintext.list_sessions()
            assert error.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_fisherd(process)

    process, address = start_fisherd(f"--tls-cert={d / 'server.pem'}",
                                      f"--tls-key={d / 'server.key'}",
                                      f"--tls-client-ca={d / 'ca.pem'}")
    try:
        with fisherd.Client(address, root_certificates=pki["ca.pem"],
                            private_key=pki["client.key"],
                            certificate_chain=pki["client.pem"]) as c:
            assert c.list_sessions() == []
        with fisherd.Client(address, root_certificates=pki["ca.pem"], timeout=5) as anonymous:
            with pytest.raises(fisherd.FisherdError) as error:
                anonymous.list_sessions()
            assert error.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_fisherd(process)
