"""Configuration: TOML and flags, one-line errors that name the key, and the
README's reference kept in step with the code."""

import socket
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from appliance.config import load_config, reference_table
from appliance.errors import ConfigError
from appliance.host.listening import connections_on, listening_ports

README = Path(__file__).parents[2] / "README.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_flags_override_the_file_and_defaults_fill_the_rest(tmp_path: Path) -> None:
    file = write(tmp_path, 'cluster_ip = "192.0.2.10"\nweight = 2.0\nguard_ms = 3.0\n')
    config = load_config(file, {"weight": 0.5, "bridge": None})
    assert config.cluster_ip == IPv4Address("192.0.2.10")
    assert config.weight == 0.5 and config.bridge == "br0"
    assert config.claim_settings().guard == 0.003


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('cluster_ip = "192.0.2.10"\nweigth = 2\n', "unknown key 'weigth'"),
        ('cluster_ip = "192.0.2.10"\nweight = -1\n', "weight: -1 is out of range"),
        ('cluster_ip = "192.0.2.10"\nweight = "heavy"\n', "weight: 'heavy' is not a number"),
        ('cluster_ip = "2001:db8::10"\n', "cluster_ip: 2001:db8::10 is IPv6"),
        ('cluster_ip = "224.0.0.5"\n', "cannot be a cluster address"),
        ('cluster_ip = "192.0.2.10"\ninterface = "a-very-long-interface-name"\n', "interface:"),
        ('cluster_ip = "192.0.2.10"\nlog_format = "xml"\n', "log_format: 'xml' is not one of"),
        (
            'cluster_ip = "192.0.2.10"\nmetrics_listen = "9150"\n',
            "metrics_listen: '9150' is not HOST:PORT",
        ),
        ('cluster_ip = "192.0.2.10"\nhello_interval = 5.0\n', "member_timeout (1.5) must exceed"),
        ('cluster_ip = "192.0.2.10"\ntap_name = "br0"\n', "must all differ"),
        ('cluster_ip = "192.0.2.10"\ntun_name = "eth0"\n', "must all differ"),
        ('cluster_ip = "192.0.2.10"\ninterface = "br0"\n', "must all differ"),
        ("cluster_ip = [\n", "is not valid TOML"),
        ("weight = 1.0\n", "cluster_ip is required"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text), {})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_missing_file_and_a_short_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", {"cluster_ip": "192.0.2.10"})
    key = tmp_path / "claim.key"
    key.write_text("short\n")
    config = load_config(None, {"cluster_ip": "192.0.2.10", "key_file": str(key)})
    with pytest.raises(ConfigError, match="needs at least 16"):
        config.claim_key()
    key.write_text("a key of more than sixteen bytes\n")
    assert config.claim_key() == b"a key of more than sixteen bytes"


def test_the_readme_carries_the_generated_reference() -> None:
    assert reference_table() in README.read_text(), (
        "README's configuration reference is out of date: paste `appliance-ctl config-reference`"
    )


def test_listening_ports_come_from_the_kernel_socket_table() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagram.bind(("127.0.0.1", 0))
    connected = socket.socket()
    connected.bind(("127.0.0.1", 0))  # bound, never listening
    try:
        ports = listening_ports(IPv4Address("127.0.0.1"))
        assert (6, listener.getsockname()[1]) in ports
        assert (17, datagram.getsockname()[1]) in ports
        assert (6, connected.getsockname()[1]) not in ports
        elsewhere = listening_ports(IPv4Address("192.0.2.10"))
        assert (6, listener.getsockname()[1]) not in elsewhere
    finally:
        for sock in (listener, datagram, connected):
            sock.close()


def test_connections_on_counts_open_connections_of_the_address() -> None:
    """What `drain --wait` waits for on the fast path: the local stack's
    connections on the cluster address (127.0.0.2 here, nobody else's)."""
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen()
    before = connections_on(IPv4Address("127.0.0.2"))
    client = socket.create_connection(listener.getsockname(), source_address=("127.0.0.1", 0))
    server, _ = listener.accept()
    try:
        # The accepted side is on 127.0.0.2; the client's own side, from 127.0.0.1, is not.
        assert connections_on(IPv4Address("127.0.0.2")) == before + 1
        client.close()
        server.close()
        deadline = time.monotonic() + 2
        while connections_on(IPv4Address("127.0.0.2")) != before:  # TIME_WAIT is over for us
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        for sock in (listener, client, server):
            sock.close()


def test_a_member_timeout_too_short_for_the_bucket_lease_is_refused() -> None:
    config = load_config(
        None, {"cluster_ip": "192.0.2.10", "hello_interval": 1.0, "member_timeout": 1.5}
    )
    with pytest.raises(ConfigError, match=r"member_timeout .* must exceed twice hello_interval"):
        config.bucket_settings(None)
    assert load_config(None, {"cluster_ip": "192.0.2.10"}).bucket_settings(None) is not None
