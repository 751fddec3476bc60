"""Orchestration, the top layer: the study plan the workflow runs, and the parameter search.

It calls the rooms' Python APIs (`lora`, `generate`, `classify`) and catches their typed
exceptions; no room imports it.
"""
