import collections
import doctest

import pytest

import ganno_lightning.imports
from ganno_lightning.imports import import_object


def test_names_a_module_attribute_and_a_dotted_attribute():
    assert import_object("collections:OrderedDict") is collections.OrderedDict
    assert import_object("collections:OrderedDict.fromkeys") == collections.OrderedDict.fromkeys
    assert import_object("helpers:TinyRegressor").__name__ == "TinyRegressor"  # tests/ is on sys.path


@pytest.mark.parametrize("path", ["collections.OrderedDict", "collections:", ":OrderedDict", "a:b:c", "", None, 3])
def test_malformed_paths_name_the_argument_and_the_form(path):
    with pytest.raises(ValueError, match=r"`factory` must be an import path 'package.module:attr', got "):
        import_object(path, argument="factory")


def test_a_module_that_cannot_be_imported_is_named():
    with pytest.raises(ValueError, match=r"`task` 'no_such_pkg.models:make': cannot import module 'no_such_pkg.models' "
                                         r"\(No module named 'no_such_pkg'\)\. Is its package installed"):
        import_object("no_such_pkg.models:make", argument="task")


def test_a_missing_attribute_names_its_owner():
    with pytest.raises(ValueError, match=r"`path` 'collections:OrderedDict.nope': 'collections.OrderedDict' has no "
                                         r"attribute 'nope'\."):
        import_object("collections:OrderedDict.nope")
    with pytest.raises(ValueError, match=r"'collections' has no attribute 'Nope'\."):
        import_object("collections:Nope")


def test_docstring_examples():
    result = doctest.testmod(ganno_lightning.imports, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
