"""Errors raised for bad input: each names the file (or field) and what was expected."""


class InputError(ValueError):
    """Bad user input: a file, a field or a value that is not what the study needs."""


class StudyConfigError(InputError):
    """An invalid study file."""
