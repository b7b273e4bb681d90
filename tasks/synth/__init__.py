"""Phantom cohorts: synthetic recordings with planted ground truth.

Part of the product (the built-in demo data, and how researchers check an
installation), not a test helper.  ``seizure.generate_cohort`` and
``gait.generate_cohort`` are what ``semioflow synth seizure|gait`` call.
"""
