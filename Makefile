# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m streams.ops.broker fetch-jars
	touch $(STAMP)

install: $(STAMP)

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
