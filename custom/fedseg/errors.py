"""Errors fedseg raises on purpose: each message names the file or setting and what is wrong."""

from __future__ import annotations


class FedsegError(Exception):
    """Base class: an error a user can act on, shown without a traceback by the CLI."""


class DataError(FedsegError):
    """A dataset, datalist or image file is missing, unreadable or inconsistent."""


class ConfigError(FedsegError):
    """A site configuration is missing, malformed or holds a value that is not allowed."""


class CheckpointError(FedsegError):
    """A model file cannot be loaded or does not fit the task's network."""


class NonFiniteLossError(FedsegError):
    """Training produced a NaN or infinite loss; the update must not be used."""

    def __init__(self, epoch: int, iteration: int, value: float):
        super().__init__(f"non-finite loss ({value}) at epoch {epoch}, iteration {iteration}: training stopped")
        self.epoch = epoch
        self.iteration = iteration
        self.value = value
