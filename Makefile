# Shortcuts; each target sets up the virtualenv first (idempotent).
.PHONY: setup main test bazel-query clean

setup:
	bash scripts/setup.sh

main: setup
	.venv/bin/seat-tf train --config=configs/fashion_mnist_seat.py:quick --workdir=runs/fashion_mnist_seat

test: setup
	.venv/bin/python -m pytest -q tests

bazel-query:
	bazel query //...

clean:
	rm -rf runs .pytest_cache build *.egg-info
