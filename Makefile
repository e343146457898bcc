# bulkrelay: the two commands of the README's quick start are `make lab` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1
# molecule writes its own ansible.cfg for a scenario; ansible.cfg's pipelining reaches it here
export ANSIBLE_PIPELINING := true
# Scenarios run by `make test`, longest first as a CI run measures them (its log ends with
# "scenario times"), two at a time (scripts/molecule-all.sh), so both lanes end together.
# `default` (site.yml on a bare inventory) is the bench's playbook timing; `sender` runs the
# same site.yml with tests, so CI leaves it out. One scenario: `make molecule SCENARIOS=relay`.
SCENARIOS ?= lab dns sender bounces tls relay dnsbl
export MOLECULE_LANES ?= 2

.PHONY: help venv lab-up lab lab-down lint unit molecule test bench

help:
	@echo "make lab       stand up the lab and run site.yml against it, then print the summary"
	@echo "make lab-down  remove the lab containers and networks"
	@echo "make test      lint, unit tests and every molecule scenario (what CI runs)"
	@echo "make bench     benchmarks (not part of the tests)"

venv:
	@scripts/bootstrap.sh

lab-up: venv
	@lab/lab.sh up

lint: venv
	yamllint --strict .
	ruff check .
	ruff format --check .
	ansible-lint --profile production

unit: venv
	scripts/pytest.sh tests

molecule: lab-up
	@scripts/molecule-all.sh $(SCENARIOS)

# lab-up first: it installs the Debian packages the unit tests use too (Postfix, rbldnsd, chromium)
test: lab-up lint unit molecule

bench: lab-up
	bench/run_all.sh

lab: lab-up
	scripts/lab-demo.sh

lab-down: venv
	-molecule destroy -s lab
	lab/lab.sh down
