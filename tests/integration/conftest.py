from __future__ import annotations

import pytest

from tests.support.sink import unique_prefix


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """This test's own topic prefix."""
    return unique_prefix(request.node.name)
