"""EfficientNet cross-validation over real + synthetic training mixes (Keras 3, scikit-learn).

Never imports torch (Keras may use it as its backend when KERAS_BACKEND=torch).
"""
