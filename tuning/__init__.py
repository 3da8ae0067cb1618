"""The project's tuning entry point, kept at the top level of the repository:

    python -m tuning.search --config=configs/fashion_mnist_seat.py --project_dir=runs/tune ...

It is the same program as `seat-tf tune`. The code lives in the installed package
(`seat_tf.tuning`), so the wheel does not put a generic top-level `tuning` package into
site-packages and the CLI can reach it without a side door; this folder only runs it.
"""
