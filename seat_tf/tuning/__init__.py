"""KerasTuner search over SEAT's lam and flood level (`seat-tf tune`).

    hypermodel.py  SEATHyperModel: builds each trial's model through seat_tf.experiment.
    search.py      the search, its flags, the final evaluation and the report.

Importing `search` defines its absl flags, so the CLI imports it only for `seat-tf tune`.
"""
