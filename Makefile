# Everything needs only python3 and make: the virtual environment is made on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo lint test test-min bench bench-many profile sample-data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/noiseaug run sample_data/ out/ --progress --preview 8

lint: $(STAMP)
	$(BIN)/ruff check noiseaug tests benchmarks

test: lint
	$(BIN)/python -m pytest

# The suite on the lowest versions pyproject.toml declares (constraints-min.txt), in its own venv. The
# scale-out tests stay in make test: their extras' floors are the versions make test installs.
test-min:
	test -x .venv-min/bin/python || $(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-min.txt -e '.[test-core]'
	.venv-min/bin/python -m pytest -q --ignore=tests/test_scale_out.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/many.py

bench-many: $(STAMP)
	$(BIN)/python benchmarks/many.py

profile: $(STAMP)
	$(BIN)/python benchmarks/many.py --profile 4000

sample-data: $(STAMP)
	$(BIN)/python tests/generate_sample_data.py sample_data

clean:
	rm -rf out .pytest_cache build *.egg-info .venv-min
