"""What the evaluation rooms (`classify`, `segment`) share: the cross-validation protocol (`crossval`), statistics
and verdicts, and `keras.import_keras`.

No deep-learning framework is imported at module level: `analysis.keras.import_keras` imports Keras inside
the function, when a task starts training.
"""
