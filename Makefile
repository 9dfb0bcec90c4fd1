# The two commands: `make run` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The site file: `make run SITE=sites/radnet.yaml` or `FILMLESS_SITE=sites/radnet.yaml make run`.
FILMLESS_SITE ?= sites/demo.yaml
SITE ?= $(FILMLESS_SITE)
export FILMLESS_SITE := $(SITE)

.PHONY: run test fuzz messages check-site ohif-check clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Filmless needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,redis]'
	@touch $@

run: $(VENV)/.installed
	$(BIN)/filmless migrate
	$(BIN)/filmless seed-demo
	$(BIN)/filmless run

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The long fuzzing runs (short ones are part of `make test`): the DICOM parser, coverage-guided
# with atheris, FUZZ_RUNS inputs, then the count and what became of them; and the web APIs,
# SCHEMA_FUZZ_EXAMPLES requests per operation and principal generated from the OpenAPI schema.
FUZZ_RUNS ?= 1000000
SCHEMA_FUZZ_EXAMPLES ?= 200
fuzz: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,redis,fuzz]'
	FILMLESS_SCHEMA_FUZZ_EXAMPLES=$(SCHEMA_FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -s -p no:cacheprovider \
		tests/security/test_schema_fuzz.py
	$(BIN)/python tests/security/fuzz_dicom.py --executions $(FUZZ_RUNS)

# Extract every message from Python and templates, update the catalogues
# (creating a language's catalogue the first time). The .po files are the
# source of truth: core/i18n.py reads them directly, nothing is compiled.
messages: $(VENV)/.installed
	$(BIN)/pybabel --quiet extract -F babel.cfg -k _ -k N_ -k gettext -k ngettext:1,2 --no-location --sort-output \
		--project=Filmless --copyright-holder="Filmless contributors" -o locales/messages.pot core plugins
	$(BIN)/pybabel --quiet update --init-missing --ignore-obsolete --no-fuzzy-matching -i locales/messages.pot -d locales -l es
	$(BIN)/pybabel --quiet update --init-missing --ignore-obsolete --no-fuzzy-matching -i locales/messages.pot -d locales -l en

# OHIF Viewer 3 (downloaded once into .cache/, sha512-checked) against a real `filmless serve`:
# study list, each study's viewport drawn, no DICOMweb request failed. Not part of `make test`.
ohif-check: $(VENV)/.installed
	$(BIN)/python checks/ohif_check.py

check-site: $(VENV)/.installed
	$(BIN)/filmless check-site $(SITE)

clean:
	rm -rf $(VENV) var .pytest_cache
