# The two set-up commands: `make demo` and `make test`. Both create .venv if it is missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed
DATA    := data/synthetic

.PHONY: demo test clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) tools/demo.py --data $(DATA)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf .venv data output
