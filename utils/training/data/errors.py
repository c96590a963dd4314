"""The one exception the data layer raises for problems a person can fix."""

from __future__ import annotations

from ..errors import PersonFacing


class DataError(PersonFacing, ValueError):
    """Bad data input (missing/binary file, too little text, unknown source); says the fix.

    A ValueError subclass so callers that already catch ValueError keep working.
    """
