"""The study's vocabulary, shared by `lora`, `generate` and `classify`.

- `prompts.dataset`: the one dataset reader (folder layouts, labels.csv, fold groups).
- `prompts.images`: the one image decoder (8/16-bit, grayscale/RGB/RGBA, EXIF).
- `prompts.templates`: class / cell-line labels to text prompts (YAML templates).
- `prompts.config` and `prompts.schema`: the study YAML file, validated.
- `prompts.splits`: the split file (JSON) written by `classify split`.
- `prompts.errors`, `prompts.files`: one-line user errors, atomic writes, hashes.

Only numpy, Pillow and PyYAML are imported here, so every room can use it.
"""
