"""`python -m tuning.search ...`: runs the KerasTuner search of seat_tf.tuning.search (the
same program as `seat-tf tune`; flags and docs there)."""

import sys

from absl import app

from seat_tf.tuning import search

if __name__ == "__main__":
    search.define_shared_flags()
    sys.exit(app.run(search.main))
