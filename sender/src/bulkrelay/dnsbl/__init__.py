"""DNSBL monitoring: one checker (checker.py) behind the Nagios plugin, the cron job and the
`bulkrelay_dnsbl` Ansible module. Lists and their return codes: lists.py; query names: names.py;
Nagios output: report.py; cron state and change alerts: state.py and cron.py."""
