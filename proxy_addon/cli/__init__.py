"""The ``tokenproxy`` command: ``run`` (runner and workers), ``check``, ``status``,
``revoke``, ``authorize``, ``keygen``. The composition root: nothing imports it.
"""
