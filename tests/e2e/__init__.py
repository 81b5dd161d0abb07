"""End-to-end tests: train.py, sample.py, the launchers and several processes run as a user runs them.

A package, so that a file here may share its name with a unit-test file under tests/ (e2e.test_x vs test_x).
"""
