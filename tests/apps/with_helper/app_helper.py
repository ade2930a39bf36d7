"""The app's own helper module."""


def describe(x: object) -> str:
    return f"x is {x}"
