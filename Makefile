# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install proto bench clean browser

# Each set-up step says what it does and how long it took; a step already done is skipped.
STEP = @start=$$(date +%s); echo "==> $(1)"; $(2) && echo "    done in $$(( $$(date +%s) - start )) s"

$(STAMP): pyproject.toml setup.py streams/contract/_wire.c
	$(call STEP,creating the virtualenv $(VENV),$(PYTHON) -m venv $(VENV))
	$(call STEP,upgrading pip,$(BIN)/pip install -q --upgrade pip)
	$(call STEP,installing Tally (its wire decoder compiled with the C compiler) and its Python dependencies (Faust, aiokafka; chDB is about 500 MB; a minute or two the first time),PYTHONWARNINGS=ignore $(BIN)/pip install -q -e '.[test]')
	@$(BIN)/python -c "from streams.contract import envelope_columns as e; print('    the wire decoder is built' if e.NATIVE else '    the wire decoder is not built (no C compiler?): the worker decodes with upb, slower; install gcc and run make install again')"
	$(call STEP,fetching the Kafka jars with Maven (once; cached in ~/.cache/tally),$(BIN)/python -m streams.ops.broker fetch-jars)
	$(call STEP,installing Debian's chromium and chromium-driver for the dashboard's browser tests (once),$(MAKE) -s browser)
	@touch $(STAMP)

install: $(STAMP)

# The browser tests drive a real Chromium; Debian's packages, not one a test tool downloads.
# Not fatal: the demo does not need a browser; without one, the browser tests say what is missing.
APT = $(if $(filter 0,$(shell id -u)),,sudo -n) env DEBIAN_FRONTEND=noninteractive apt-get
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "    no apt-get here: install chromium and chromedriver yourself for tests/test_dashboard.py"; exit 0; fi; \
	$(APT) install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	{ $(APT) update -qq >/dev/null 2>&1 && $(APT) install -y -qq chromium chromium-driver >/dev/null 2>&1; } || \
	echo "    could not install chromium and chromium-driver (needs root or sudo): tests/test_dashboard.py needs them"

demo: $(STAMP)
	$(BIN)/tally demo

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/tally bench

# Regenerate the committed Protobuf code after editing proto/ (tests/test_contract.py checks it).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=streams/contract --pyi_out=streams/contract proto/tally/v1/*.proto

clean:
	rm -rf .tally
