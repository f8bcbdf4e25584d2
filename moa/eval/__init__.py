"""The evaluation harness behind ``moa eval``: AlpacaEval 2.0, MT-Bench and your own QA sets.

Every benchmark run is resumable (a checkpoint per finished item, fsync'd),
keeps each item's full MoA trace, and writes the official file formats.
"""
