# The two commands of the README: `make run` and `make test`. Everything else is optional.
# Python 3.13 (Lambda's runtime): python3.13 on PATH, else pyenv's 3.13, else python3 if it is 3.13+.
PYTHON ?= $(shell for p in python3.13 $$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.13*/bin/python3.13 2>/dev/null) python3; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 13))' 2>/dev/null && { command -v "$$p"; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install when a requirements file changes.
READY  := $(VENV)/.ready
CHECKOV_VENV  := .venv-checkov
CHECKOV_READY := $(CHECKOV_VENV)/.ready
export SAM_CLI_TELEMETRY ?= 0
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: run test test-unit fuzz openapi check lint format hooks validate checkov build migrate bench clean

# The layer (atcore), the migration runner (db/) and the repository's tools (devtools) are put on
# the virtualenv's path once, by a .pth file, as /opt/python is on Lambda's: no sys.path edits.
$(READY): requirements-dev.txt layers/common/requirements.txt Makefile
	@test -n "$(PYTHON)" || { echo "AT needs Python 3.13 (python3.13 on PATH, or PYTHON=/path/to/python3.13)" >&2; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "at.pth").write_text("".join(str(pathlib.Path(p).resolve()) + "\n" for p in ("layers/common/python", "db", ".")))'
	touch $@

run: $(READY)  ## serve the API (and run tasks) on http://127.0.0.1:$${API_PORT:-8080}
	$(BIN)/python -m devtools.run

test: $(READY)  ## unit, integration (real PostgreSQL) and end-to-end tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(READY)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

fuzz: $(READY)  ## schemathesis against the local run: AT_FUZZ_EXAMPLES (1000) cases per operation and mode
	AT_FUZZ_EXAMPLES=$${AT_FUZZ_EXAMPLES:-1000} $(BIN)/python -m pytest tests/e2e/test_fuzz_api.py $(PYTEST_ARGS)

openapi: $(READY)  ## regenerate docs/openapi.json from the API functions (served at /openapi.json, /docs)
	$(BIN)/python -m devtools.openapi

$(CHECKOV_READY): requirements-checkov.txt
	@test -n "$(PYTHON)" || { echo "AT needs Python 3.13 (python3.13 on PATH, or PYTHON=/path/to/python3.13)" >&2; exit 1; }
	$(PYTHON) -m venv --clear $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

check: lint  ## everything CI checks besides the tests: lint, format, types, template, security, JSON
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m devtools.check_json

lint: $(READY) checkov
	$(BIN)/ruff check .
	$(BIN)/sam validate --lint

format: $(READY)  ## ruff format (and the fixes ruff check can make)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

hooks: $(READY)  ## install the git pre-commit hooks (.pre-commit-config.yaml; they run the tools of .venv)
	$(BIN)/pre-commit install

checkov: $(CHECKOV_READY)  ## template.yaml's security checks; every skip in the template says why
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --compact --quiet --skip-download

validate: $(READY)
	$(BIN)/sam validate --lint

build: $(READY)
	$(BIN)/sam build

migrate: $(READY)  ## apply db/migrations to the DB_* database (DB_HOST must be set)
	$(BIN)/python db/migrate.py

bench: $(READY)  ## benchmarks, not tests: figures into docs/BENCHMARKS.md (BENCH_ARGS="listing" runs one)
	$(BIN)/python -m devtools.bench $(BENCH_ARGS)

clean:
	rm -rf .aws-sam .local
