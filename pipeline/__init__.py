"""edgeopt.pipeline: model zoo, tasks, model loading, studies, reports and the CLI.

Example:
    >>> from edgeopt.pipeline import zoo
    >>> zoo.create("digits_cnn").__class__.__name__
    'DigitsCNN'
"""
