"""Markers of the env tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: trains real tasks for their full budget (under a minute on one core); deselect with -m 'not slow'"
    )
