"""The application wing: what each mode (replay, live, report, setup) does with the floors below.

`assemble.py` is the one place a run is put together from its configuration; the modes hand the
parts it returns to their own loops.
"""
