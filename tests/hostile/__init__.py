"""A hostile copy of the portal and the corpus of cases run against the pipeline.

Run the whole corpus and print `case | exit | published? | held`:
`python -m tests.hostile` (from the repository root). `tests/test_hostile.py` runs each
case as a pytest test.
"""
