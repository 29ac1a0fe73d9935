"""Data: image folders, text files and TFDS as `tf.data` pipelines, augmentation in the
pipeline, and the inputs `fit` accepts."""
