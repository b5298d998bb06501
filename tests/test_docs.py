"""The generated docs come from the registries: they must match the code."""

import pytest

from trainwell.cli import registry_tables
from trainwell.docs import rendered, render_foundations, render_reference


@pytest.mark.parametrize("path", list(rendered()), ids=lambda p: p.name)
def test_generated_docs_are_up_to_date(path):
    assert path.read_text() == rendered()[path], "docs are stale: run python -m trainwell.docs"


def test_reference_lists_every_registry_entry():
    text = render_reference()
    for kind, rows in registry_tables().items():
        assert f"## {kind}" in text
        for name, _ in rows:
            assert f"`{name}`" in text


def test_foundations_tables_have_every_activation_and_init():
    from trainwell.nn import ACTIVATIONS, INITS

    text = render_foundations()
    for entry in list(ACTIVATIONS) + list(INITS):
        assert f"| `{entry.name}` |" in text
