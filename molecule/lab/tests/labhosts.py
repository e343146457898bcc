"""What the lab's tests share: the hosts and how to list or delist the relay on the lab's
blacklist; running commands, waiting and playbooks come from molecule/shared/tests/labexec.py."""

import dns.exception
import dns.message
import dns.query
from labexec import sh, wait_for

RELAY, MAILHOST, APP, OUTSIDER, DNSBL = (
    "br-lab-relay",
    "br-lab-mailhost",
    "br-lab-app",
    "br-lab-outsider",
    "br-lab-dnsbl",
)
RELAY_IP, RELAY_APP_IP, BIND, DNSBL_IP = "198.51.100.101", "203.0.113.215", "198.51.100.100", "198.51.100.104"
RBL_ZONE = "/var/lib/lab-rbldnsd/bl.lab.test.ip4set"


def _rbldnsd_lists_relay():
    """True/False as the lab's rbldnsd answers for the relay's address; None when it is silent."""
    name = ".".join(reversed(RELAY_IP.split("."))) + ".bl.lab.test"
    try:
        return bool(dns.query.udp(dns.message.make_query(name, "A"), DNSBL_IP, timeout=2).answer)
    except dns.exception.Timeout:
        return None


def set_relay_listed(listed):
    """List (or delist) the relay on bl.lab.test and wait until rbldnsd answers so: a reload
    is asynchronous, and a check that runs before it would see the old zone."""
    change = f"echo {RELAY_IP} >> {RBL_ZONE}" if listed else f"sed -i '/^{RELAY_IP}$/d' {RBL_ZONE}"
    sh(DNSBL, f"{change} && systemctl reload lab-rbldnsd")
    wait_for(f"rbldnsd to answer listed={listed}", lambda: _rbldnsd_lists_relay() is listed, timeout=30)
