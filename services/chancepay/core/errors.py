"""The root of every exception ChancePay defines.

Each module keeps its own exceptions beside the code that raises them (a configuration error in
core/config.py, an unreachable database in core/db.py, a malformed body in core/codec.py, ...);
they all derive from `ChancePayError`, so one `except ChancePayError` tells "a failure this code
base knows and names" from a programming error or a library's own exception. Classes that were
a `ValueError` or a `RuntimeError` before still are (multiple inheritance), so no existing
handler changes meaning. No I/O, nothing else here.
"""

from __future__ import annotations


class ChancePayError(Exception):
    """A failure ChancePay itself names; never raised bare, always through a subclass."""
