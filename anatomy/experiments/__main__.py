"""``python -m anatomy.experiments``: which experiment module serves which chapter (see :func:`index`)."""

from anatomy.experiments import _table

print(_table())
