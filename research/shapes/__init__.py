"""The shapes world (generator, captions, VOC export) and the training and tuning of the shipped shapes model.

The library needs only the world's class names at run time (``diffsegmenter.shapes``); the shipped model lives in
``src/diffsegmenter/models/shapes/``, and the record of how it was trained and tuned in ``runs/shipped/``.
"""
