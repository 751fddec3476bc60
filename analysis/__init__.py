"""Statistics and verdicts shared by the evaluation rooms (`classify`, `segment`).

Pure numpy/scipy: no deep-learning framework is imported here.
"""
