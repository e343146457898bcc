"""The converged relay, checked from inside the container."""


def test_systemd_runs(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded"), state


def test_hostname(host):
    assert host.run("hostname -f").stdout.strip() == "relay.example.test"
